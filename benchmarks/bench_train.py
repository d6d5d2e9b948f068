"""Training throughput on the real ML-1M, on the CPU: sequences/s, seconds per epoch and peak memory.

Each configuration runs in a fresh process (so that its peak RSS and its thread count are its own). The process
sets the run up with trainer.start_run, exactly as a training does (data, network with the rating baseline,
objective, optimizer, schedule, generators), runs warm-up steps, then times single training steps - the trainer's
own forward_backward and optimizer_step (batch building, forward, backward, gradient clipping, AdamW, schedule)
on batches of its shuffle - and one full-ranking validation pass. Seconds per epoch = steps per epoch x the
median step time + the validation pass (measured, not a whole epoch: the seed's epoch takes many minutes on a CPU).

    python benchmarks/bench_train.py --data_dir path/to/ml-1m --steps 15       # the seed's configuration
    python benchmarks/bench_train.py --configs cpu_small cpu_sampled cpu_small_bf16 cpu_small_compile
    python benchmarks/bench_train.py --configs best best_fp32 --steps 10
    python benchmarks/bench_train.py --configs cpu_small --limit          # the step's share of the matmul rate
    python benchmarks/bench_train.py --steps 300 --configs best best_unpadded   # the loss-row padding: peak RSS
    python benchmarks/bench_train.py --configs cpu_small --flags "--next_item_crop 0.5"   # any other flags

Achieved GFLOP/s counts the matrix products of one training step (forward and backward, as
`torch.utils.flop_counter.FlopCounterMode` counts them: matmuls and attention, not the element-wise work) divided
by the median step time. `--limit` also measures this CPU's large-matmul rate in fp32 and bf16 in the same run
(square matmuls, median of 3, the same thread count) and states the step's rate as a share of each. Results:
docs/RESULTS.md#benchmarks-speed-and-memory.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from itertools import cycle
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fresh_process import in_fresh_process, peak_rss_mb  # noqa: E402
from data_processor import eval_inputs  # noqa: E402
from train_config import CONFIGS, parse_args, validate_config  # noqa: E402
from trainer import (  # noqa: E402
    Run,
    data_to_tensors,
    epoch_batches,
    evaluate,
    forward_backward,
    optimizer_step,
    setup_runtime,
    start_run,
    to_eval_tensors,
    window_shard,
)

RSS_TARGET_MB = 3072  # peak RSS target of the seed's configuration
CPU_SMALL, BEST = f"@{CONFIGS / 'cpu_small.txt'}", f"@{CONFIGS / 'best.txt'}"
BENCH_CONFIGS = {  # --configs key: (table name, trainer.py flags)
    "seed": ("the seed's (configs/seed.txt: hidden 256, 4 layers, T 50, batch 64, all four tasks)",
             [f"@{CONFIGS / 'seed.txt'}"]),
    "cpu_small": ("CPU default (configs/cpu_small.txt: hidden 64, 2 layers, batch 128, causal)", [CPU_SMALL]),
    "cpu_sampled": ("AVX2 default (configs/cpu_sampled.txt: the CPU default, sampled item loss, 1,024 negatives)",
                    [f"@{CONFIGS / 'cpu_sampled.txt'}"]),
    "cpu_small_bf16": ("CPU default, --amp bf16", [CPU_SMALL, "--amp", "bf16"]),
    "cpu_small_compile": ("CPU default, --compile (inductor)", [CPU_SMALL, "--compile"]),
    "bf16_small": ("short-budget bf16 model (configs/bf16_small.txt: hidden 128, 2 layers, batch 64, full softmax)",
                   [f"@{CONFIGS / 'bf16_small.txt'}"]),
    "bf16_small_compile": ("short-budget bf16 model, --compile (inductor)",
                           [f"@{CONFIGS / 'bf16_small.txt'}", "--compile"]),
    "bf16_small_fp32": ("short-budget bf16 model, --amp off", [f"@{CONFIGS / 'bf16_small.txt'}", "--amp", "off"]),
    "bf16_small_muon": ("short-budget bf16 default (configs/bf16_small_muon.txt: bf16_small.txt with Muon, lr 1.5e-3)",
                        [f"@{CONFIGS / 'bf16_small_muon.txt'}"]),
    "best": ("best model (configs/best.txt: hidden 256, 4 layers, T 50, batch 128, causal, crop 0.5, bf16)", [BEST]),
    "best_muon": ("best model with Muon (configs/best_muon.txt: the bf16 CPUs' default)",
                  [f"@{CONFIGS / 'best_muon.txt'}"]),
    "best_fp32": ("best model, --amp off", [BEST, "--amp", "off"]),
    "best_fp32_sampled": ("best model, --amp off, --item_loss sampled (1,024 negatives)",
                          [BEST, "--amp", "off", "--item_loss", "sampled"]),
    "best_compile": ("best model, --compile (inductor)", [BEST, "--compile"]),
    # the loss rows unpadded: their logits come in a new size every step, the peak RSS the padding saves
    "best_unpadded": ("best model, --loss_row_bucket 0", [BEST, "--loss_row_bucket", "0"]),
}


def training_run(flags: list[str], data_dir: str, threads: int, cache_dir: str | None = None,
                 device: str = "cpu") -> tuple[Run, Iterator]:
    """A run set up from trainer.py flags as the trainer sets it up (in training mode, its tensors on the device),
    and an endless stream of its training batches. cache_dir: the processed arrays' cache (runs/cache)."""
    torch.set_num_threads(threads)
    config = parse_args(["--data_dir", data_dir, "--cache_dir", cache_dir or str(REPO / "runs" / "cache"), *flags,
                         "--device", device])
    validate_config(config)
    run = start_run(config, setup_runtime(config))
    run.data_tensors = data_to_tensors(run.data, run.runtime.device)
    run.objective.train()
    batches = cycle(epoch_batches(window_shard(run.data.window_users, 0, 1), config.batch_size, run.generators[0]))
    return run, batches


def measure(flags: list[str], data_dir: str, steps: int, warmup: int, threads: int, cache_dir: str | None = None,
            validate: bool = True, device: str = "cpu", validate_first: bool = False) -> dict:
    """Set one configuration's run up as trainer.py does and time its training steps and (validate) a full-ranking
    validation pass of every user (eval_s; 0 without it). cache_dir: the processed arrays' cache (runs/cache).
    validate_first: one validation pass before the warm-up, untimed, as every epoch of a training after its first
    has behind it (its large blocks raise glibc's self-adjusting mmap threshold: docs/RESULTS.md).
    On a GPU (device "cuda") each timed interval waits for the device's queue to empty at both ends, and
    gpu_peak_mb is the largest memory torch allocated there (0 on a CPU)."""
    run, batches = training_run(flags, data_dir, threads, cache_dir, device)
    config = run.config
    num_windows = len(run.data.window_users)

    on_gpu = run.runtime.device.type == "cuda"

    def synchronize() -> None:
        if on_gpu:
            torch.cuda.synchronize(run.runtime.device)

    def step() -> None:
        forward_backward(run, next(batches))
        optimizer_step(run)

    val_split = None

    def validation_pass() -> float:
        """One full-ranking validation pass, timed; the validation tensors are built on the first."""
        nonlocal val_split
        if val_split is None:
            val_split = to_eval_tensors(eval_inputs(run.data, "val", config.seq_length), run.runtime.device)
        synchronize()
        started = time.perf_counter()
        evaluate(run.model, val_split, run.data_tensors, config.eval_batch_size)  # restores the training mode
        synchronize()
        return time.perf_counter() - started

    if validate_first:
        validation_pass()
    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        synchronize()
        started = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - started)
    page_faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / max(1, steps)
    train_rss_mb = peak_rss_mb()
    eval_s = validation_pass() if validate else 0.0
    return {"step_s": statistics.median(times), "step_min_s": min(times), "step_max_s": max(times),
            "batch_size": config.batch_size, "steps_per_epoch": -(-num_windows // config.batch_size),
            "windows": num_windows, "eval_s": eval_s, "users": run.data.num_users, "items": run.data.num_items,
            "step_flops": counter.get_total_flops(), "parameters": sum(p.numel() for p in run.model.parameters()),
            "train_rss_mb": train_rss_mb, "peak_rss_mb": peak_rss_mb(), "page_faults_per_step": page_faults,
            "gpu_peak_mb": torch.cuda.max_memory_allocated(run.runtime.device) / 2**20 if on_gpu else 0.0}


def matmul_gflops(dtype: str, size: int, threads: int, repeats: int = 3) -> float:
    """This CPU's rate in GFLOP/s on a square matrix product (dtype: a torch dtype's name), the median of `repeats`
    products after one warm-up, on `threads` threads. Another job on the cores lowers it."""
    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size).to(getattr(torch, dtype)) for _ in range(2))
    a @ b
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def table_row(name: str, m: dict, limits: dict[str, float]) -> str:
    epoch_s = m["steps_per_epoch"] * m["step_s"] + m["eval_s"]
    achieved = m["step_flops"] / m["step_s"] / 1e9
    return (f"| {name} | {m['parameters'] / 1e6:.2f} M | {m['step_s']:.3f} [{m['step_min_s']:.3f}-"
            f"{m['step_max_s']:.3f}] | {m['batch_size'] / m['step_s']:.0f} | {m['eval_s']:.1f} "
            f"| {epoch_s:.0f} ({m['steps_per_epoch']} steps of {m['windows']} windows) "
            f"| {m['train_rss_mb']:.0f} / {m['peak_rss_mb']:.0f} | {m['step_flops'] / 1e9:.1f} | {achieved:.1f} |"
            + "".join(f" {achieved / rate:.0%} |" for rate in limits.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=list(BENCH_CONFIGS), default=["seed", "cpu_small"],
                        help="configurations to measure, in this order")
    parser.add_argument("--flags", default="", help="trainer.py flags added to every configuration (one string)")
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
        limits = {"fp32": in_fresh_process(matmul_gflops, "float32", args.limit_size, args.threads),
                  "bf16": in_fresh_process(matmul_gflops, "bfloat16", args.limit_size_bf16, args.threads)}
        print(f"large-matmul rate, {args.threads} threads: fp32 {limits['fp32']:.1f} GFLOP/s "
              f"({args.limit_size}^2), bf16 {limits['bf16']:.1f} GFLOP/s ({args.limit_size_bf16}^2)\n", flush=True)
    share_columns = "".join(f" share of {name} matmul |" for name in limits)
    print("| configuration | parameters | step (s), median [min-max] | sequences/s | validation pass (s) "
          f"| s/epoch | peak RSS (MB): training steps / with the validation pass | GFLOP per step | GFLOP/s "
          f"|{share_columns}")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(limits))
    seed_note = ""
    for key in args.configs:
        name, flags = BENCH_CONFIGS[key]
        name += f", {args.flags}" if args.flags else ""
        measured = in_fresh_process(measure, [*flags, *shlex.split(args.flags)], args.data_dir, args.steps,
                                    args.warmup, args.threads)
        print(table_row(name, measured, limits), flush=True)
        if key == "seed":
            verdict = "met" if measured["peak_rss_mb"] <= RSS_TARGET_MB else "MISSED"
            seed_note = f"\nthe seed's configuration: peak RSS target <= {RSS_TARGET_MB} MB: {verdict}"
    print(seed_note)


if __name__ == "__main__":
    main()
