"""Training throughput on the real ML-1M: sequences/s, seconds per epoch and peak memory.

Each configuration runs in a fresh process (so its peak RSS is its own): load the data, build the model and the
multi-task objective exactly as trainer.py does, run warm-up steps, then time single optimizer steps (batch
building, forward, backward, AdamW) and one full-ranking validation pass. Seconds per epoch = steps per epoch x
the median step time + the validation pass (measured, not a whole epoch: the default configuration's epoch takes
many minutes on a CPU).

    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --steps 15
    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --configs tuned tuned_bf16   # bf16 autocast
    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --configs budget budget_compile  # compile
    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --configs cpu_default --limit  # share of limit
    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --steps 300 --configs causal_h256_bf16 \
        causal_h256_bf16_unpadded   # the loss rows padded to a multiple of 256 (the default) or not: peak RSS

Achieved GFLOP/s counts the matrix products of one optimizer step (forward and backward, as
`torch.utils.flop_counter.FlopCounterMode` counts them: matmuls and attention, not the element-wise work) divided
by the median step time. `--limit` also measures this CPU's large-matmul rate in fp32 and bf16 in the same run
(square matmuls, median of 3, the same thread count) and states the step's rate as a share of each.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RSS_TARGET_MB = 3072  # the target for the default configuration

GPU_LEAD_T50 = ["@configs/gpu_causal.txt", "--seq_length", "50"]  # issue 18's GPU lead (docs/RESULTS.md) at T 50
CONFIGS = {  # --configs key: (table name, trainer.py flags)
    "default": ("default (seed: hidden 256, 4 heads, 4 layers, T 50, batch 64)", []),
    "small": ("small CPU (hidden 64, 2 heads, 2 layers, T 50, batch 128)",
              ["--hidden_size", "64", "--num_heads", "2", "--num_layers", "2", "--batch_size", "128"]),
    "tuned": ("tuned (configs/ml1m_tuned.txt: the seed's size, batch 256)", ["@configs/ml1m_tuned.txt"]),
    "tuned_bf16": ("tuned, --amp bf16", ["@configs/ml1m_tuned.txt", "--amp", "bf16"]),
    "budget": ("CPU default (configs/cpu_budget.txt: hidden 64, 2 layers, batch 128)", ["@configs/cpu_budget.txt"]),
    "budget_compile": ("CPU default, --compile (inductor)", ["@configs/cpu_budget.txt", "--compile"]),
    "budget_causal": ("CPU default, --causal (every position predicts its successor)",
                      ["@configs/cpu_budget.txt", "--causal"]),
    "cpu_default": ("CPU default (configs/cpu_causal.txt: hidden 64, 2 layers, batch 128, causal)",
                    ["@configs/cpu_causal.txt"]),
    "cpu_default_bf16": ("CPU default, --amp bf16", ["@configs/cpu_causal.txt", "--amp", "bf16"]),
    "causal_h256": ("causal, hidden 256, 4 layers, T 50, crop 0.5 (issue 18's GPU lead)",
                    GPU_LEAD_T50),
    "causal_h256_bf16": ("causal, hidden 256, 4 layers, T 50, crop 0.5, --amp bf16",
                         [*GPU_LEAD_T50, "--amp", "bf16"]),
    "causal_h256_bf16_unpadded": ("causal, hidden 256, 4 layers, T 50, crop 0.5, --amp bf16, --loss_row_bucket 0",
                                  [*GPU_LEAD_T50, "--amp", "bf16", "--loss_row_bucket", "0"]),
    "cpu_default_crop": ("CPU default, --next_item_crop 0.5", ["@configs/cpu_causal.txt", "--next_item_crop", "0.5"]),
    "cpu_default_crop_unpadded": ("CPU default, --next_item_crop 0.5, --loss_row_bucket 0",
                                  ["@configs/cpu_causal.txt", "--next_item_crop", "0.5", "--loss_row_bucket", "0"]),
}

CHILD = """
import json, math, resource, statistics, sys, time
import torch
from torch.utils.flop_counter import FlopCounterMode
sys.path.insert(0, {repo!r})
from data_processor import eval_inputs, load_dataset, mask_index
from enhanced_model import EnhancedBERT4Rec
from trainer import (MultiTaskObjective, autocast_context, build_model_config, data_to_tensors, evaluate,
                     make_batch, make_optimizer, parse_args, to_eval_tensors)

torch.set_num_threads({threads})
config = parse_args({args!r})
data = load_dataset(config.data_dir, cache_dir=config.cache_dir, seq_length=config.seq_length)
model = EnhancedBERT4Rec(build_model_config(config, data), data.item_genres, data.item_years)
if config.compile:
    model.encoder.compile()
objective = MultiTaskObjective(model, config.task_weights, config.loss_row_bucket).train()
optimizer = make_optimizer(model, config)
tensors = data_to_tensors(data, torch.device("cpu"))
generator = torch.Generator().manual_seed(0)
mask_token = mask_index(data.num_items)
num_windows = len(data.window_users)

def step():
    rows = torch.randint(0, num_windows, (config.batch_size,), generator=generator)
    batch = make_batch(tensors, rows, mask_token, config.mask_prob, config.user_dropout,
                       config.demographics_dropout, generator, mask_last=config.next_item_on,
                       crop_prob=config.next_item_crop, new_user_prob=config.new_user_prob, causal=config.causal)
    with autocast_context(config.amp, "cpu"):
        losses = objective(batch)
    losses["total"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

for _ in range({warmup}):
    step()
with FlopCounterMode(display=False) as counter:
    step()
step_flops = counter.get_total_flops()
times = []
for _ in range({steps}):
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
train_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
evaluate(model, to_eval_tensors(eval_inputs(data, "val", config.seq_length), torch.device("cpu")), tensors,
         config.eval_batch_size)
eval_s = time.perf_counter() - started
print(json.dumps({{"step_s": statistics.median(times), "step_min_s": min(times), "step_max_s": max(times),
                  "batch_size": config.batch_size, "steps_per_epoch": math.ceil(num_windows / config.batch_size),
                  "windows": num_windows, "eval_s": eval_s, "step_flops": step_flops,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "train_rss_mb": train_rss_mb,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(flags: list[str], data_dir: str, steps: int, warmup: int, threads: int) -> dict:
    args = ["--data_dir", data_dir, "--cache_dir", str(REPO / "runs" / "cache"), *flags]
    code = CHILD.format(repo=str(REPO), args=args, steps=steps, warmup=warmup, threads=threads)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO)
    return json.loads(result.stdout.splitlines()[-1])


def matmul_gflops(dtype: str, size: int, threads: int) -> float:
    """This CPU's rate on one large square matmul (median of 3 after one warm-up), in a fresh process."""
    code = (f"import statistics, time, torch\ntorch.set_num_threads({threads})\n"
            f"a = torch.randn({size}, {size}).to(torch.{dtype}); b = torch.randn({size}, {size}).to(torch.{dtype})\n"
            "a @ b\ntimes = []\nfor _ in range(3):\n"
            "    started = time.perf_counter(); a @ b; times.append(time.perf_counter() - started)\n"
            f"print(2 * {size} ** 3 / statistics.median(times) / 1e9)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--steps", type=int, default=15, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["default", "small"],
                        help="configurations to measure, in this order")
    parser.add_argument("--limit", action="store_true",
                        help="also measure the fp32 and bf16 large-matmul rates and report each step's share")
    parser.add_argument("--limit_size", type=int, default=4096, help="matrix side for the fp32 matmul rate")
    parser.add_argument("--limit_size_bf16", type=int, default=1024,
                        help="matrix side for the bf16 matmul rate (CPUs without bf16 instructions emulate it, slowly: "
                             "one 2048^2 product took minutes on a 2-core AVX2 CPU)")
    args = parser.parse_args()

    print(f"torch threads {args.threads}; median of {args.steps} timed steps after {args.warmup} warm-up steps\n")
    limits = {}
    if args.limit:
        limits = {"fp32": matmul_gflops("float32", args.limit_size, args.threads),
                  "bf16": matmul_gflops("bfloat16", args.limit_size_bf16, args.threads)}
        print(f"large-matmul rate, {args.threads} threads: fp32 {limits['fp32']:.1f} GFLOP/s "
              f"({args.limit_size}^2), bf16 {limits['bf16']:.1f} GFLOP/s ({args.limit_size_bf16}^2)\n", flush=True)
    share_columns = "".join(f" share of {name} matmul |" for name in limits)
    print("| configuration | parameters | step (s), median [min-max] | sequences/s | validation pass (s) "
          f"| s/epoch | peak RSS (MB): training steps / with the validation pass | GFLOP per step | GFLOP/s "
          f"|{share_columns}")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(limits))
    default_note = ""
    for key in args.configs:
        name, flags = CONFIGS[key]
        m = measure(flags, args.data_dir, args.steps, args.warmup, args.threads)
        epoch_s = m["steps_per_epoch"] * m["step_s"] + m["eval_s"]
        achieved = m["step_flops"] / m["step_s"] / 1e9
        print(f"| {name} | {m['parameters'] / 1e6:.2f} M | {m['step_s']:.3f} [{m['step_min_s']:.3f}-"
              f"{m['step_max_s']:.3f}] | {m['batch_size'] / m['step_s']:.0f} | {m['eval_s']:.1f} "
              f"| {epoch_s:.0f} ({m['steps_per_epoch']} steps of {m['windows']} windows) "
              f"| {m['train_rss_mb']:.0f} / {m['peak_rss_mb']:.0f} "
              f"| {m['step_flops'] / 1e9:.1f} | {achieved:.1f} |"
              + "".join(f" {achieved / rate:.0%} |" for rate in limits.values()), flush=True)
        if key == "default":
            verdict = "met" if m["peak_rss_mb"] <= RSS_TARGET_MB else "MISSED"
            default_note = f"\ndefault-config peak RSS target <= {RSS_TARGET_MB} MB: {verdict}"
    print(default_note)


if __name__ == "__main__":
    main()
