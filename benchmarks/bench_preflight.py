"""How fast trainer.py refuses a bad flag, on the real data: one command line of each kind of check the preflight
makes (BAD_FLAGS), run as a user runs it (a fresh `python trainer.py ... --data_dir <ml-1m>` process), wall time
from start to exit, median of --repeats runs. Beside it, the same for `python -c "import torch"` (the interpreter
and torch's import, which every run pays before trainer.py's first line) and `python trainer.py --help`.

    python benchmarks/bench_preflight.py --data_dir path/to/ml-1m --repeats 3
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT_SECONDS = 2.0
# one of each kind of refusal: a range, two flags together, the memory estimate, argparse's own errors, a missing
# config file, the device and mixed precision
BAD_FLAGS = [
    ["--batch_size", "0"],
    ["--hidden_size", "30", "--num_heads", "4"],
    ["--causal", "--next_item_weight", "0"],
    ["--seq_length", "100000"],
    ["--hidden_size", "abc"],
    ["--no_such_flag", "1"],
    ["@no-such-config.txt"],
    ["--amp", "fp16", "--device", "cpu"],
]


def timed(command: list[str], repeats: int) -> tuple[float, int, str]:
    """Median wall seconds of `command`, its exit status and the last line of its stderr."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        seconds.append(time.perf_counter() - started)
    lines = done.stderr.strip().splitlines()
    return statistics.median(seconds), done.returncode, lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for label, command in [("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
                               ("trainer.py --help", [sys.executable, "trainer.py", "--help"])]:
            seconds, _, _ = timed(command, args.repeats)
            rows.append(f"| {label} (reference) | {seconds:.2f} | - | - |")
        for flags in BAD_FLAGS:
            command = [sys.executable, "trainer.py", "--data_dir", args.data_dir, "--checkpoint_dir",
                       str(Path(scratch) / "run"), *flags]
            seconds, status, line = timed(command, args.repeats)
            worst = max(worst, seconds)
            written = "nothing" if not any(Path(scratch).iterdir()) else "FILES WRITTEN"
            rows.append(f"| `{' '.join(flags)}` | {seconds:.2f} | {status} | {written}: {line[:90]} |")
    print(f"| refused flags (python trainer.py ... --data_dir {args.data_dir}) | median s ({args.repeats} runs) "
          "| exit status | written, stderr |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nslowest refusal {worst:.2f} s (limit {LIMIT_SECONDS} s): {'met' if worst < LIMIT_SECONDS else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
