"""The training step with trainer.keep_freed_memory (glibc's malloc keeps freed memory for the next step) against
glibc's defaults: step time, page faults a step and peak RSS.

The setting is process-wide and cannot be undone in a process, so each measurement is a fresh process (the step as
benchmarks/bench_train.py times it, after one untimed validation pass, as a training's epochs after the first: that
pass's large blocks raise glibc's self-adjusting mmap threshold, which changes what the default costs), the two
variants alternating pair by pair (the order swapped every pair), so that a drift in the machine's speed falls on
both. The ratio is the median of the pairs' ratios.

    python benchmarks/bench_allocator.py --data_dir path/to/ml-1m --configs bf16_small best --pairs 6

Results: docs/RESULTS.md#benchmarks-speed-and-memory.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import trainer  # noqa: E402
from benchmarks.bench_train import BENCH_CONFIGS, measure  # noqa: E402
from benchmarks.fresh_process import in_fresh_process  # noqa: E402

VARIANTS = ("kept", "glibc default")


def one_measurement(variant: str, flags: list[str], data_dir: str, steps: int, warmup: int, threads: int) -> dict:
    """bench_train.measure's training steps in this process, with the allocator setting on (kept) or left off."""
    if variant != "kept":
        trainer.keep_freed_memory = lambda: False  # setup_runtime's call then changes nothing
    return measure(flags, data_dir, steps, warmup, threads, validate=False, validate_first=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--configs", nargs="+", choices=list(BENCH_CONFIGS), default=["bf16_small"])
    parser.add_argument("--flags", default="", help="trainer.py flags added to every configuration (one string)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs of processes per configuration")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per process")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    print(f"torch threads {args.threads}; {args.pairs} pairs of processes, each the median of {args.steps} steps "
          f"after {args.warmup} warm-up steps\n")
    print("| configuration | step (s), kept: median of pairs | glibc default | ratio, median of pairs [min-max] "
          "| page faults a step, kept / default | peak RSS (MB), kept / default |")
    print("|---|---|---|---|---|---|")
    for key in args.configs:
        name, flags = BENCH_CONFIGS[key]
        flags = [*flags, *shlex.split(args.flags)]
        results: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
        for pair in range(args.pairs):
            for variant in (VARIANTS if pair % 2 == 0 else VARIANTS[::-1]):
                results[variant].append(in_fresh_process(one_measurement, variant, flags, args.data_dir, args.steps,
                                                         args.warmup, args.threads))
        kept, default = ([m["step_s"] for m in results[v]] for v in VARIANTS)
        ratios = [k / d for k, d in zip(kept, default, strict=True)]
        faults = [statistics.median(m["page_faults_per_step"] for m in results[v]) for v in VARIANTS]
        rss = [max(m["train_rss_mb"] for m in results[v]) for v in VARIANTS]
        print(f"| {name} | {statistics.median(kept):.3f} | {statistics.median(default):.3f} "
              f"| {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] "
              f"| {faults[0]:.0f} / {faults[1]:.0f} | {rss[0]:.0f} / {rss[1]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
