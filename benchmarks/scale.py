"""What each stage costs as the data grows: time and peak RSS per stage, on synthetic ML-32M-shaped files
(benchmarks/synthetic_movielens.py) of several sizes, each stage in a fresh process.

    python benchmarks/scale.py --sizes 1M 5M 20M 32M --work runs/scale        # writes runs/scale/scale.md

Sizes name the events; users and items scale from ML-32M's shape (200,948 users, 87,585 movies for 32,000,204
ratings) unless --items fixes the catalogue. Stages: "write" (the synthetic files themselves), "read" (ratings.csv
and movies.csv -> the data model's tables, readers.read_dataset: parsing, validation with file-and-line errors,
ids), "process" (raw files -> the training arrays with the cache written: data_processor.load_dataset), "reload"
(the same from the cache) and "metadata" (metadata.json, which training writes and inference reads). Training
steps, full-ranking evaluation and the all-users export are not measured here yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data_processor  # noqa: E402
import readers  # noqa: E402
from benchmarks.fresh_process import in_fresh_process, peak_rss_mb  # noqa: E402
from benchmarks.synthetic_movielens import write_synthetic_movielens  # noqa: E402

ML32M_USERS, ML32M_ITEMS, ML32M_EVENTS = 200_948, 87_585, 32_000_204
STAGES = ("write", "read", "process", "reload", "metadata")
SUFFIXES = {"K": 1_000, "M": 1_000_000}


def parse_size(text: str) -> int:
    """"5M" -> 5,000,000 events; "250K" -> 250,000; a plain number as it is."""
    scale = SUFFIXES.get(text[-1:].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def shape(events: int, items: int | None) -> tuple[int, int]:
    """Users and items for this many events, in ML-32M's proportions (items fixed by --items when given)."""
    users = max(1, round(ML32M_USERS * events / ML32M_EVENTS))
    return users, items or max(100, round(ML32M_ITEMS * (events / ML32M_EVENTS) ** 0.5))


def write_stage(folder: str, users: int, items: int, events: int) -> float:
    write_synthetic_movielens(folder, users, items, events)
    return peak_rss_mb()


def read_stage(folder: str) -> float:
    """Raw ratings.csv and movies.csv -> the data model's tables (parsing, validation, ids)."""
    readers.read_dataset(folder)
    return peak_rss_mb()


def process_stage(folder: str, cache_dir: str) -> float:
    """Raw files -> the training arrays (data_processor.load_dataset: read, split, windows, features), writing the
    cache; a cache left by an earlier run is removed first, so that the whole path is measured."""
    for stale in Path(cache_dir).glob("*.npz"):
        stale.unlink()
    data_processor.load_dataset(folder, cache_dir=cache_dir)
    return peak_rss_mb()


def reload_stage(folder: str, cache_dir: str) -> float:
    """The same arrays from the cache (the source files' md5 is still computed: it is the cache key)."""
    data_processor.load_dataset(folder, cache_dir=cache_dir)
    return peak_rss_mb()


def metadata_stage(folder: str, cache_dir: str) -> float:
    """metadata.json (what inference needs: id maps, item table, every user's history), from the cached arrays."""
    data = data_processor.load_dataset(folder, cache_dir=cache_dir)
    data_processor.save_metadata(data, Path(cache_dir) / "metadata.json")
    return peak_rss_mb()


def timed(function, *args) -> tuple[float, float]:
    """Wall seconds and the peak RSS (GB) of function(*args) in a fresh process."""
    started = time.perf_counter()
    peak_mb = in_fresh_process(function, *args)
    return time.perf_counter() - started, peak_mb / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1M", "5M", "20M", "32M"], help="events per point")
    parser.add_argument("--items", type=int, help="fix the catalogue (default: grows with the events)")
    parser.add_argument("--work", default="runs/scale", help="where the synthetic files and the table go")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to measure")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    rows = ["| events | users | items | stage | seconds | peak RSS (GB) |", "|---|---|---|---|---|---|"]
    for events in sorted(parse_size(size) for size in args.sizes):
        users, items = shape(events, args.items)
        folder = work / f"events_{events}_items_{items}"
        cache = str(folder / "cache")
        stages = {"write": (write_stage, str(folder), users, items, events), "read": (read_stage, str(folder)),
                  "process": (process_stage, str(folder), cache), "reload": (reload_stage, str(folder), cache),
                  "metadata": (metadata_stage, str(folder), cache)}
        stages = {name: stage for name, stage in stages.items() if name in args.stages}
        for stage, (function, *stage_args) in stages.items():
            if stage == "write" and (folder / "ratings.csv").exists():
                continue
            seconds, peak_gb = timed(function, *stage_args)
            rows.append(f"| {events:,} | {users:,} | {items:,} | {stage} | {seconds:.1f} | {peak_gb:.2f} |")
            print(rows[-1], flush=True)
    (work / "scale.md").write_text("\n".join(rows) + "\n")
    print(f"wrote {work / 'scale.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
