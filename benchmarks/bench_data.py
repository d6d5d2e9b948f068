"""Benchmark data_processor on the real ML-1M: (a) raw files -> ready arrays without a cache and
(b) loading the same arrays from the cache.

Every run is a fresh Python process, so nothing cached in memory helps (the OS file cache does, as it would
for any second run). Reported per case: the median and range of `load_dataset`'s wall time inside the process,
the median wall time of the whole process (interpreter start and imports included) and the largest peak RSS.

    python benchmarks/bench_data.py --data_dir path/to/ml-1m --runs 5
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGETS = {"a": 10.0, "b": 1.0}  # seconds of load time; peak RSS target for both: 1.5 GB
RSS_TARGET_MB = 1536


def load_once(data_dir: str, cache_dir: str) -> dict[str, float]:
    """The measurement inside the fresh process: data_processor's import (imported here, not at the top of this
    file, so that its cost is measured), load_dataset's wall time and the process's peak RSS."""
    started = time.perf_counter()
    import data_processor

    imported = time.perf_counter()
    data = data_processor.load_dataset(data_dir, cache_dir=cache_dir or None)
    loaded = time.perf_counter()
    if len(data.seq_items) != 1_000_209 or data.window_items.shape[1] != 50:
        raise ValueError(f"{data_dir} is not the full ML-1M at the default windows: the targets are for it")
    return {"import_s": imported - started, "load_s": loaded - imported,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_once(data_dir: Path, cache_dir: str) -> dict[str, float]:
    """One fresh process (this file with --load): load_dataset's time, the whole process's wall time and its peak
    RSS."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--load", str(data_dir), cache_dir], cwd=REPO,
                            capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.splitlines()[-1])
    return measured | {"process_s": time.perf_counter() - started}


def summarise(name: str, target_s: float, runs: list[dict[str, float]]) -> str:
    load = [run["load_s"] for run in runs]
    peak_rss = max(run["peak_rss_mb"] for run in runs)
    met = statistics.median(load) <= target_s and peak_rss <= RSS_TARGET_MB
    return (
        f"| {name} | {len(runs)} | {statistics.median(load):.2f} | {min(load):.2f}-{max(load):.2f} "
        f"| {statistics.median(run['process_s'] for run in runs):.2f} | {peak_rss:.0f} "
        f"| <= {target_s:g} s, <= {RSS_TARGET_MB} MB | {'yes' if met else 'NO'} |"
    )


def main() -> int:
    """Run both cases and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per case (default: 5)")
    parser.add_argument("--load", nargs=2, metavar=("DATA_DIR", "CACHE_DIR"),
                        help="one measurement in this process, printed as JSON (what each fresh process runs)")
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load_once(*args.load)))
        return 0
    data_dir = Path(args.data_dir)
    if not (data_dir / "ratings.dat").is_file():
        print(f"error: real ML-1M not found at {data_dir}; pass --data_dir", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory() as cache_dir:
        no_cache = [run_once(data_dir, "") for _ in range(args.runs)]
        run_once(data_dir, cache_dir)  # writes the cache
        from_cache = [run_once(data_dir, cache_dir) for _ in range(args.runs)]

    print("| case | runs | load_dataset median (s) | range (s) | whole process median (s) | peak RSS (MB) "
          "| target | met |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(summarise("(a) raw files -> arrays, no cache", TARGETS["a"], no_cache))
    print(summarise("(b) from the cache", TARGETS["b"], from_cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
