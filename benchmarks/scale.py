r"""What each stage costs as the data grows: time and peak RSS per stage, on synthetic ML-32M-shaped files
(benchmarks/synthetic_movielens.py) of several sizes, each stage in a fresh process.

    python benchmarks/scale.py --sizes 1M 5M 20M 32M --work runs/scale        # every stage at each size
    python benchmarks/scale.py --sizes 1M --items 3706 27000 --stages write process train   # the step vs the catalogue
    python benchmarks/scale.py --sizes 1M --items 3706 87585 --stages write process train --models best_bf16 \
        --item_loss full --device cuda       # the same on a GPU, the best model as configured, full softmax

Sizes name the events; users and items scale from ML-32M's shape (200,948 users, 87,585 movies for 32,000,204
ratings) unless --items fixes the catalogue (one point per value). Stages:
- "write": the synthetic files themselves;
- "read": ratings.csv and movies.csv -> the data model's tables (readers.read_dataset: parsing, validation with
  file-and-line errors, ids);
- "process": raw files -> the training arrays with the cache written (data_processor.load_dataset);
- "reload": the same from the cache, every array then read once;
- "metadata": metadata.json (which training writes and inference reads);
- "train": the median training step of each --models configuration with the --item_loss item loss (sampled unless
  told), set up and run by the trainer's own code (benchmarks/bench_train.measure: batch, forward, backward,
  clipping, AdamW) on --device (on a GPU each step is timed from an empty queue to an empty queue);
- "evaluate": one full-ranking validation pass over every user (trainer.evaluate), the CPU default's shape;
- "export": the all-users top-10 through the engine (RecommendationEngine.export_recommendations, streamed CSV),
  from a checkpoint of the CPU default's shape (freshly initialised: the cost does not depend on the weights).
Each measurement is appended to <work>/scale.json (a later call adds to it or replaces the same point), from which
<work>/scale.md (the table) and <work>/scale.png (the log-log picture) are written again. Seconds are those of the
stage's own work in its process (interpreter start and imports excluded); peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data_processor  # noqa: E402
import readers  # noqa: E402
from benchmarks.fresh_process import in_fresh_process, peak_rss_mb  # noqa: E402
from benchmarks.synthetic_movielens import write_synthetic_movielens  # noqa: E402
from train_config import CONFIGS  # noqa: E402

ML32M_USERS, ML32M_ITEMS, ML32M_EVENTS = 200_948, 87_585, 32_000_204
STAGES = ("write", "read", "process", "reload", "metadata", "train", "evaluate", "export")
SUFFIXES = {"K": 1_000, "M": 1_000_000}
# untimed steps before a training stage's timed ones: a GPU's first steps also tune its kernels and fill its
# allocator's cache, so it gets more of them
WARMUP_STEPS = {"cpu": 2, "cuda": 10}
MODELS = {  # --models key: (name, trainer.py flags), with the --item_loss item loss
    "cpu": ("CPU default (hidden 64, 2 layers)", [f"@{CONFIGS / 'cpu_small.txt'}"]),
    "best": ("best model's shape (hidden 256, 4 layers), fp32", [f"@{CONFIGS / 'best.txt'}", "--amp", "off"]),
    "best_bf16": ("best model as configured (hidden 256, 4 layers, bf16)", [f"@{CONFIGS / 'best.txt'}"]),
}


def parse_size(text: str) -> int:
    """"5M" -> 5,000,000 events; "250K" -> 250,000; a plain number as it is."""
    scale = SUFFIXES.get(text[-1:].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def shape(events: int, items: int | None) -> tuple[int, int]:
    """Users and items for this many events, in ML-32M's proportions (items fixed by --items when given)."""
    users = max(1, round(ML32M_USERS * events / ML32M_EVENTS))
    return users, items or max(100, round(ML32M_ITEMS * (events / ML32M_EVENTS) ** 0.5))


def _stopwatch(function, *args) -> dict:
    started = time.perf_counter()
    function(*args)
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb()}


def write_stage(folder: str, users: int, items: int, events: int) -> dict:
    return _stopwatch(write_synthetic_movielens, folder, users, items, events)


def read_stage(folder: str) -> dict:
    """Raw ratings.csv and movies.csv -> the data model's tables (parsing, validation, ids)."""
    return _stopwatch(readers.read_dataset, folder)


def process_stage(folder: str, cache_dir: str) -> dict:
    """Raw files -> the training arrays (data_processor.load_dataset: read, split, windows, features), writing the
    cache; a cache left by an earlier run is removed first, so that the whole path is measured."""
    import shutil

    for stale in Path(cache_dir).glob("*_T*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return _stopwatch(data_processor.load_dataset, folder, cache_dir)


def reload_stage(folder: str, cache_dir: str) -> dict:
    """The same arrays from the cache (memory-mapped; the sources are matched by size and modification time), then
    every byte of them read once (a sum), so that the time includes bringing them in from the disk cache."""
    import numpy as np

    def reload_and_read() -> None:
        data = data_processor.load_dataset(folder, cache_dir)
        for value in vars(data).values():
            for array in value.values() if isinstance(value, dict) else [value]:
                if isinstance(array, np.ndarray):
                    np.ascontiguousarray(array).view(np.uint8).sum()

    return _stopwatch(reload_and_read)


def metadata_stage(folder: str, cache_dir: str) -> dict:
    """metadata.json (what inference needs: id maps, item table, every user's history), from the cached arrays."""
    data = data_processor.load_dataset(folder, cache_dir=cache_dir)
    return _stopwatch(data_processor.save_metadata, data, Path(cache_dir) / "metadata.json")


def seconds_text(seconds: float) -> str:
    """Two decimals, or two significant digits below 1 s (a tiny stage's reload is not 0.00 s, and a GPU's 18 ms
    training step is not 0.02 s)."""
    return f"{seconds:.2f}" if seconds >= 1 else f"{seconds:.2g}"


def model_flags(model: str, num_negatives: int, item_loss: str = "sampled") -> list[str]:
    return [*MODELS[model][1], "--item_loss", item_loss, "--num_negatives", str(num_negatives)]


def model_key(model: str, item_loss: str) -> str:
    """A training record's model: the --models key, with "_full" when the item loss is the full softmax."""
    return model if item_loss == "sampled" else f"{model}_full"


def train_stage(folder: str, cache_dir: str, model: str, num_negatives: int, steps: int, threads: int,
                item_loss: str = "sampled", device: str = "cpu") -> dict:
    """The median of `steps` training steps (after WARMUP_STEPS of the device's kind) of one --models configuration."""
    from benchmarks.bench_train import measure

    warmup = WARMUP_STEPS["cuda" if device.startswith("cuda") else "cpu"]
    measured = measure(model_flags(model, num_negatives, item_loss), folder, steps, warmup, threads, cache_dir,
                       validate=False, device=device)
    loss = "sampled loss" if item_loss == "sampled" else "full softmax"
    gpu = f", {measured['gpu_peak_mb'] / 1024:.1f} GB on the GPU" if measured["gpu_peak_mb"] else ""
    return {"seconds": measured["step_s"], "peak_mb": measured["train_rss_mb"], "step_gflop":
            measured["step_flops"] / 1e9, "steps_per_epoch": measured["steps_per_epoch"],
            "gpu_peak_mb": measured["gpu_peak_mb"], "device": device,
            "note": f"{MODELS[model][0]}, {loss}, {device}: {measured['batch_size'] / measured['step_s']:.0f} "
                    f"sequences/s, {measured['step_flops'] / 1e9:.1f} GFLOP per step, "
                    f"{measured['steps_per_epoch']:,} steps per epoch{gpu}"}


def evaluate_stage(folder: str, cache_dir: str, num_negatives: int, threads: int) -> dict:
    """One full-ranking validation pass of every user (trainer.evaluate, batches of --eval_batch_size users),
    the CPU default's shape after one training step."""
    from benchmarks.bench_train import measure

    measured = measure(model_flags("cpu", num_negatives), folder, 1, 0, threads, cache_dir, validate=True)
    return {"seconds": measured["eval_s"], "peak_mb": measured["peak_rss_mb"],
            "note": f"{measured['users']:,} users x {measured['items']:,} items"}


def write_model(folder: str, cache_dir: str, out: str, num_negatives: int) -> None:
    """A checkpoint of the CPU default's shape (as initialised) and metadata.json, for the export stage."""
    from train_config import parse_args
    from trainer import save_model_checkpoint, setup_runtime, start_run

    config = parse_args(["--data_dir", folder, "--cache_dir", cache_dir, *model_flags("cpu", num_negatives),
                         "--device", "cpu"])
    run = start_run(config, setup_runtime(config))
    Path(out).mkdir(parents=True, exist_ok=True)
    save_model_checkpoint(Path(out) / "model.pt", run.model, run.data.fingerprint, run.config)
    data_processor.save_metadata(run.data, Path(out) / "metadata.json")


def export_stage(out: str, threads: int) -> dict:
    """Load the engine and write every known user's top 10 to a CSV (streamed, the engine's batches of users)."""
    import torch

    from engine import RecommendationEngine

    torch.set_num_threads(threads)

    def export() -> None:
        engine = RecommendationEngine(Path(out) / "model.pt", Path(out) / "metadata.json", device="cpu")
        engine.export_recommendations(Path(out) / "top10.csv", k=10, progress=False)

    return _stopwatch(export) | {"note": "engine load + export, CPU default's shape"}


def render(records: list[dict], work: Path) -> None:
    """scale.md (the table, by size then stage) and scale.png (log-log: seconds against events per stage, and the
    training step against the catalogue) from every record so far."""
    records.sort(key=lambda r: (r["events"], r["items"], STAGES.index(r["stage"]), r.get("model", "")))
    rows = ["| events | users | items | stage | seconds | peak RSS (GB) | note |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['stage']} | {seconds_text(r['seconds'])} "
             f"| {r['peak_mb'] / 1024:.2f} | {r.get('note', '')} |" for r in records]
    (work / "scale.md").write_text("\n".join(rows) + "\n")
    from plots import plot_scale

    # against the events: the catalogue growing with them (the --items points are for the training step alone)
    plot_scale([r for r in records if r["stage"] == "train" or r["items"] == shape(r["events"], None)[1]],
               work / "scale.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1M", "5M", "20M", "32M"], help="events per point")
    parser.add_argument("--items", type=int, nargs="+", help="fix the catalogue, one point per value (default: "
                        "grows with the events)")
    parser.add_argument("--work", default="runs/scale", help="where the synthetic files and the table go")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to measure")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="configurations whose training step is measured")
    parser.add_argument("--num_negatives", type=int, default=1024, help="the sampled item loss's negatives")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--item_loss", choices=("sampled", "full"), default="sampled",
                        help="the training stage's item loss (full: the softmax over every item)")
    parser.add_argument("--device", default="cpu", help="where the training stage runs: cpu, cuda, cuda:N (every "
                        "other stage is the CPU's)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = work / "scale.json"
    records = json.loads(results.read_text()) if results.is_file() else []
    for events in sorted(parse_size(size) for size in args.sizes):
        for fixed in args.items or [None]:
            users, items = shape(events, fixed)
            folder = work / f"events_{events}_items_{items}"
            cache, model_dir = str(folder / "cache"), str(folder / "model")
            stages = {"write": [(write_stage, str(folder), users, items, events)], "read": [(read_stage, str(folder))],
                      "process": [(process_stage, str(folder), cache)], "reload": [(reload_stage, str(folder), cache)],
                      "metadata": [(metadata_stage, str(folder), cache)],
                      "train": [(train_stage, str(folder), cache, model, args.num_negatives, args.steps, args.threads,
                                 args.item_loss, args.device) for model in args.models],
                      "evaluate": [(evaluate_stage, str(folder), cache, args.num_negatives, args.threads)],
                      "export": [(export_stage, model_dir, args.threads)]}
            for stage in (stage for stage in STAGES if stage in args.stages):
                if stage == "write" and (folder / "ratings.csv").exists():
                    continue
                if stage == "export":
                    in_fresh_process(write_model, str(folder), cache, model_dir, args.num_negatives)
                for function, *stage_args in stages[stage]:
                    measured = in_fresh_process(function, *stage_args)
                    model = model_key(stage_args[2], args.item_loss) if stage == "train" else ""
                    record = {"events": events, "users": users, "items": items, "stage": stage, "model": model,
                              **measured}
                    records = [r for r in records if (r["events"], r["items"], r["stage"], r.get("model", "")) !=
                               (events, items, stage, model)] + [record]
                    results.write_text(json.dumps(records, indent=1))
                    print(f"{events:,} events, {items:,} items, {stage} {model}: {measured['seconds']:.2f} s, "
                          f"peak RSS {measured['peak_mb'] / 1024:.2f} GB {measured.get('note', '')}", flush=True)
    render(records, work)
    print(f"wrote {work / 'scale.md'} and {work / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
