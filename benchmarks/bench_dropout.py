"""The training step with enhanced_model.dropout (its CPU mask cut from 64-bit draws) against torch's F.dropout,
in one process, step by step alternately, so that a drift in the machine's speed falls on both alike.

torch's CPU dropout draws one Bernoulli sample an element; enhanced_model.dropout draws one 64-bit number for four
elements. Both variants run the same network, optimizer and batches; the baseline swaps the module's dropout
function for F.dropout (what nn.Dropout and SDPA's CPU dropout run). Each configuration runs in a fresh process.

    python benchmarks/bench_dropout.py --data_dir path/to/ml-1m --configs bf16_small best --pairs 40

Results: docs/RESULTS.md#benchmarks-speed-and-memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import enhanced_model  # noqa: E402
from benchmarks.bench_train import BENCH_CONFIGS, training_run  # noqa: E402
from benchmarks.fresh_process import in_fresh_process  # noqa: E402
from trainer import forward_backward, optimizer_step  # noqa: E402


def paired_steps(flags: list[str], data_dir: str, pairs: int, warmup: int, threads: int) -> dict:
    """Median step seconds of each variant over `pairs` pairs of steps, the two orders alternating."""
    run, batches = training_run(flags, data_dir, threads)
    variants = {"enhanced_model.dropout": enhanced_model.dropout, "F.dropout": F.dropout}
    times: dict[str, list[float]] = {name: [] for name in variants}

    def step(name: str) -> float:
        enhanced_model.dropout = variants[name]
        started = time.perf_counter()
        forward_backward(run, next(batches))
        optimizer_step(run)
        return time.perf_counter() - started

    for _ in range(warmup):
        for name in variants:
            step(name)
    for pair in range(pairs):
        for name in (list(variants) if pair % 2 == 0 else list(variants)[::-1]):
            times[name].append(step(name))
    enhanced_model.dropout = variants["enhanced_model.dropout"]
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--configs", nargs="+", choices=list(BENCH_CONFIGS), default=["bf16_small"])
    parser.add_argument("--pairs", type=int, default=40, help="timed pairs of steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"torch threads {args.threads}; median of {args.pairs} steps of each variant, alternating\n")
    print("| configuration | step with F.dropout (s) | step with enhanced_model.dropout (s) | ratio |")
    print("|---|---|---|---|")
    for key in args.configs:
        name, flags = BENCH_CONFIGS[key]
        medians = in_fresh_process(paired_steps, flags, args.data_dir, args.pairs, args.warmup, args.threads)
        ours, theirs = medians["enhanced_model.dropout"], medians["F.dropout"]
        print(f"| {name} | {theirs:.3f} | {ours:.3f} | {ours / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
