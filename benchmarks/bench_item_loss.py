"""The item loss at larger catalogues: the full softmax against the sampled one (--item_loss sampled), on the CPU.

At the best model's shape (configs/best.txt: hidden 256, the cosine item head at temperature 0.05, batch 128 x 50
positions = 6,400 loss rows), for catalogues of 3,706 (ML-1M), 27,000 and 87,000 items, and the sampled loss alone
at 1,000,000 (the full softmax's logits would be 6,400 x 1M floats, 25.6 GB), this times what of a training step
grows with the catalogue: the item loss's forward and backward (the trainer's own MultiTaskObjective.item_nll on
random hidden rows: scores, the logQ-corrected sampled softmax or the full cross-entropy, the gradients of the rows,
the item table and the bias), then AdamW on the item table and bias (dense: every step reads and writes all
num_items x hidden of them and their moments). Each (loss, catalogue) runs in a fresh process, so that its peak RSS
is its own; the figure is the median of --repeats after one warm-up, in fp32 (this AVX2 CPU emulates bf16), ratios
against the 3,706-item figure of the same run.

    python benchmarks/bench_item_loss.py                          # the table, 2 threads
    python benchmarks/bench_item_loss.py --repeats 3 --train_step # also a whole training step of the best model
                                                                  # (--amp off) on ML-1M, full vs sampled
    python benchmarks/bench_item_loss.py --sampled_only --adamw loop   # torch's default AdamW on a CPU, a loop of
                                                                  # element-wise passes (default: the trainer's, fused)
    python benchmarks/bench_item_loss.py --chunks --rows 2560 --items 3706 27000    # the softmax's chunks of rows
    python benchmarks/bench_item_loss.py --chunks --items 3706 --chunk_steps bf16_small best --repeats 100

--chunks times the full softmax's cross-entropy (trainer.softmax_nll, forward and backward) on bf16 scores of --rows
rows at each catalogue, its element-wise passes in chunks of rows (the default, trainer.softmax_chunk_rows) and in
one chunk of every row (how it ran before the chunks), alternating in one process, and checks that both give the same
bits; --chunk_steps also times whole training steps of those configurations on ML-1M, the chunked and the one-chunk
loss alternating step by step in one process (the machine's drift between processes is larger than the change).

--train_step times the trainer's forward_backward + optimizer_step at 3,706 items (benchmarks/bench_train.py's
measure, configurations best_fp32 and best_fp32_sampled) and estimates the step at the larger catalogues as that
step plus the growth of the loss and the table's AdamW measured above: the rest of the step (encoder, rating head,
batches) does not depend on the number of items. Results: docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import trainer  # noqa: E402
from benchmarks.bench_train import BENCH_CONFIGS  # noqa: E402
from benchmarks.fresh_process import in_fresh_process, peak_rss_mb  # noqa: E402
from enhanced_model import EnhancedBERT4Rec, ModelConfig  # noqa: E402
from train_config import CONFIGS, TrainConfig, parse_args  # noqa: E402
from trainer import MultiTaskObjective, softmax_chunk_rows, softmax_nll  # noqa: E402

CATALOGUES = (3706, 27_000, 87_000)
SAMPLED_ONLY = (1_000_000,)  # the full softmax's logits would not fit
STEP_TIME_TARGET, RSS_TARGET_MB = 1.3, 4096  # sampled, best model's step: growth from 3.7K to 87K items; peak RSS


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def measure(num_items: int, num_negatives: int, rows: int, repeats: int, threads: int, fused: bool = True) -> dict:
    """Seconds of the item loss (forward + backward) and of AdamW on the item table, and the peak RSS."""
    torch.set_num_threads(threads)
    best = parse_args([f"@{CONFIGS / 'best.txt'}"])  # the item head's shape; one encoder layer: not timed here
    config = ModelConfig(num_items=num_items, hidden_size=best.hidden_size, num_heads=best.num_heads, num_layers=1,
                         cosine_temperature=best.cosine_temperature, use_item_side_info=False, use_user_tokens=False,
                         use_rating_head=False, use_preference_head=False)
    torch.manual_seed(0)
    model = EnhancedBERT4Rec(config)
    objective = MultiTaskObjective(model, best.task_weights, num_negatives=num_negatives,
                                   generator=torch.Generator().manual_seed(0))
    item_parameters = [model.item_embedding.weight, model.item_head.bias]
    optimizer = torch.optim.AdamW(item_parameters, lr=1e-3, weight_decay=0.0, fused=fused)  # fused: as the trainer's
    hidden_rows = torch.randn(rows, config.hidden_size, requires_grad=True)
    targets = torch.randint(1, num_items + 1, (rows,), generator=torch.Generator().manual_seed(1))
    real = torch.ones(rows, dtype=torch.bool)
    setup_rss = rss_mb()
    loss_times, adam_times = [], []
    for _ in range(repeats + 1):  # the first: warm-up
        started = time.perf_counter()
        objective.item_nll(hidden_rows, targets, real).mean().backward()
        loss_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hidden_rows.grad = None
        adam_times.append(time.perf_counter() - started)
    peak = peak_rss_mb()
    return {"loss_s": statistics.median(loss_times[1:]), "adam_s": statistics.median(adam_times[1:]),
            "peak_rss_mb": peak, "loss_rss_mb": peak - setup_rss}


def loss_table(args: argparse.Namespace) -> dict[tuple[str, int], dict]:
    cases = [(loss, items) for items in CATALOGUES for loss in ("full", "sampled") if not (args.sampled_only and
                                                                                          loss == "full")]
    cases += [("sampled", items) for items in SAMPLED_ONLY]
    print(f"item loss forward + backward, then AdamW on the item table; {args.rows} loss rows x hidden 256, cosine "
          f"head, fp32, {args.threads} threads, median of {args.repeats} after one warm-up; sampled: "
          f"{args.num_negatives} negatives; AdamW {args.adamw}\n")
    print("| loss | items | loss fwd+bwd (s) | x 3,706 | AdamW on the item table (s) | loss + AdamW (s) | x 3,706 "
          "| peak RSS (MB) | the loss's share of it (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    measured: dict[tuple[str, int], dict] = {}
    for loss, items in cases:
        negatives = args.num_negatives if loss == "sampled" else 0
        m = measured[loss, items] = in_fresh_process(measure, items, negatives, args.rows, args.repeats,
                                                     args.threads, args.adamw == "fused")
        base = measured[loss, CATALOGUES[0]]
        total, base_total = m["loss_s"] + m["adam_s"], base["loss_s"] + base["adam_s"]
        print(f"| {loss} | {items:,} | {m['loss_s']:.3f} | {m['loss_s'] / base['loss_s']:.2f} | {m['adam_s']:.3f} "
              f"| {total:.3f} | {total / base_total:.2f} | {m['peak_rss_mb']:.0f} | {m['loss_rss_mb']:.0f} |",
              flush=True)
    return measured


def train_step_estimate(args: argparse.Namespace, measured: dict[tuple[str, int], dict]) -> None:
    from benchmarks.bench_train import measure as measure_step

    print(f"\nwhole training step, best model --amp off on ML-1M (3,706 items), {args.threads} threads, median of "
          f"{args.repeats} steps; larger catalogues: that step + the growth of loss + AdamW above (an estimate)\n")
    print("| loss | step at 3,706 (s) | peak RSS at 3,706 (MB) | est. step at 27,000 (s) | est. step at 87,000 (s) "
          "| growth 3.7K -> 87K | est. peak RSS at 87,000 (MB) |")
    print("|---|---|---|---|---|---|---|")
    for loss, key in (("full", "best_fp32"), ("sampled", "best_fp32_sampled")):
        step = in_fresh_process(measure_step, BENCH_CONFIGS[key][1], args.data_dir, args.repeats, 2, args.threads)

        def grown(items: int, loss: str = loss) -> float:
            small, large = measured[loss, CATALOGUES[0]], measured[loss, items]
            return large["loss_s"] + large["adam_s"] - small["loss_s"] - small["adam_s"]

        rss_87k = step["train_rss_mb"] + measured[loss, 87_000]["peak_rss_mb"] - measured[loss, 3706]["peak_rss_mb"]
        growth = (step["step_s"] + grown(87_000)) / step["step_s"]
        verdict = f" (target <= {STEP_TIME_TARGET}x, <= {RSS_TARGET_MB} MB)" if loss == "sampled" else ""
        print(f"| {loss} | {step['step_s']:.2f} | {step['train_rss_mb']:.0f} | {step['step_s'] + grown(27_000):.2f} "
              f"| {step['step_s'] + grown(87_000):.2f} | {growth:.2f}x{verdict} | {rss_87k:.0f} |", flush=True)


def chunk_table(args: argparse.Namespace) -> None:
    """softmax_nll in chunks of rows against one chunk, alternating in this process: median seconds, same bits."""
    torch.set_num_threads(args.threads)
    trainer.keep_freed_memory()  # the allocator setting training runs with
    print(f"full softmax's cross-entropy, forward + backward, bf16 scores, {args.rows} rows, {args.threads} threads, "
          f"median of {args.repeats} each after 3 warm-ups, alternating\n")
    print("| items | rows a chunk | one chunk (s) | in chunks (s) | ratio | the same losses and gradients |")
    print("|---|---|---|---|---|---|")
    for items in args.items:
        generator = torch.Generator().manual_seed(0)
        scores = (3 * torch.randn(args.rows, items, generator=generator)).bfloat16()  # a cosine head's spread
        targets = torch.randint(0, items, (args.rows,), generator=generator)
        chunked = softmax_chunk_rows(scores)
        if chunked >= args.rows:
            print(f"| {items:,} | {chunked} | - | - | - | (one chunk holds every row) |")
            continue
        times: dict[int, list[float]] = {args.rows: [], chunked: []}
        results = {}
        for repeat in range(args.repeats + 3):  # the first three: warm-up (the heap grows to its steady size)
            for chunk_rows in times:
                leaf = scores.clone().requires_grad_()
                started = time.perf_counter()
                loss = softmax_nll(leaf, targets, chunk_rows)
                loss.sum().backward()
                if repeat >= 3:
                    times[chunk_rows].append(time.perf_counter() - started)
                results[chunk_rows] = (loss.detach(), leaf.grad)
        same = all(torch.equal(a, b) for a, b in zip(results[args.rows], results[chunked], strict=True))
        one, many = statistics.median(times[args.rows]), statistics.median(times[chunked])
        print(f"| {items:,} | {chunked} | {one:.4f} | {many:.4f} | {many / one:.3f} | {same} |", flush=True)


def chunk_steps(args: argparse.Namespace) -> None:
    """Training steps of each configuration with the chunked softmax and with one chunk, alternating step by step."""
    from benchmarks.bench_train import training_run

    if not args.chunk_steps:
        return
    print(f"\nwhole training steps on ML-1M, {args.threads} threads, the loss in chunks and in one chunk "
          f"alternating step by step, {args.repeats} steps each after 5 warm-up steps\n")
    print("| configuration | one chunk (s) | in chunks (s) | ratio |")
    print("|---|---|---|---|")
    chunk_elements = trainer.SOFTMAX_CHUNK_ELEMENTS
    for name in args.chunk_steps:
        run, batches = training_run(BENCH_CONFIGS[name][1], args.data_dir, args.threads)
        times: dict[str, list[float]] = {"one": [], "chunks": []}
        for step in range(args.repeats + 5):
            for kind in ("one", "chunks") if step % 2 else ("chunks", "one"):
                trainer.SOFTMAX_CHUNK_ELEMENTS = chunk_elements if kind == "chunks" else 1 << 62
                started = time.perf_counter()
                trainer.forward_backward(run, next(batches))
                trainer.optimizer_step(run)
                if step >= 5:
                    times[kind].append(time.perf_counter() - started)
        trainer.SOFTMAX_CHUNK_ELEMENTS = chunk_elements
        one, many = statistics.median(times["one"]), statistics.median(times["chunks"])
        print(f"| {name} | {one:.4f} | {many:.4f} | {many / one:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=6400, help="loss rows: batch 128 x 50 positions")
    parser.add_argument("--num_negatives", type=int, default=TrainConfig.num_negatives)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train_step", action="store_true", help="also time the best model's training step")
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--adamw", choices=("fused", "loop"), default="fused",
                        help="fused: the trainer's AdamW; loop: torch's default on a CPU")
    parser.add_argument("--sampled_only", action="store_true", help="leave out the full softmax (minutes at 87,000)")
    parser.add_argument("--chunks", action="store_true",
                        help="the full softmax's passes in chunks of rows against one chunk, in one process")
    parser.add_argument("--items", type=int, nargs="+", default=list(CATALOGUES),
                        help="with --chunks: the catalogues to time")
    parser.add_argument("--chunk_steps", nargs="*", default=[], metavar="CONFIG", choices=sorted(BENCH_CONFIGS),
                        help="with --chunks: also whole training steps of these bench_train configurations")
    args = parser.parse_args()
    if args.chunks:
        chunk_table(args)
        chunk_steps(args)
        return
    if args.sampled_only and args.train_step:
        parser.error("--train_step compares the full softmax with the sampled loss: leave out --sampled_only")
    measured = loss_table(args)
    if args.train_step:
        train_step_estimate(args, measured)


if __name__ == "__main__":
    main()
