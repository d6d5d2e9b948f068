r"""Time to quality on the real ML-1M: validation NDCG@10 against training minutes, configurations side by side.

Each configuration (a name and trainer.py flags) is trained for every seed under the same --max_minutes budget,
one run after another so that each has the machine to itself. Test figures come from each run's results.json
(best-validation checkpoint, EVALUATION.md protocol). Writes time_to_quality.md (table) and time_to_quality.png
(validation NDCG@10 against training minutes and epochs) into --out. Finished runs (results.json present) are
read, not rerun; an interrupted run is resumed from its last.pt, so an interrupted benchmark continues.

Without --config it trains the configurations `python trainer.py` chooses between (PRESETS): the small model with
the sampled item loss (CPUs without bf16 instructions), the hidden-128 bf16 model with Muon (bf16 CPUs on a short
budget), the best model with Muon for 8 epochs (bf16 CPUs) and with AdamW for 12 (GPUs), with the small model's
full softmax beside them. Any --config replaces all five, so on a CPU that emulates bf16 list the ones wanted:
`--config cpu_full "@configs/cpu_small.txt" --config cpu_sampled "@configs/cpu_sampled.txt" --config best_fp32
"@configs/best.txt --amp off"`.

    python benchmarks/time_to_quality.py --data_dir path/to/ml-1m --max_minutes 15 --seeds 0 1 --out runs/ttq15
    python benchmarks/time_to_quality.py --data_dir path/to/ml-1m --max_minutes 15 --seeds 0 1 \
        --config cpu_small "@configs/cpu_small.txt" \
        --config cloze "@configs/cpu_small.txt --no-causal --lr_schedule cosine" --out runs/ttq15
    python benchmarks/time_to_quality.py --out runs/ttq15 --table_only --config cpu_small "" --config cloze ""

Results: docs/RESULTS.md#time-to-quality.
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plots import plot_time_to_quality  # noqa: E402

PRESETS = {  # the configurations compared when no --config is given: name -> trainer.py flags
    "cpu_full": "@configs/cpu_small.txt",
    "cpu_sampled": "@configs/cpu_sampled.txt",
    "bf16_small_muon": "@configs/bf16_small_muon.txt",
    "best_muon": "@configs/best_muon.txt",
    "best": "@configs/best.txt",
}
BUDGET_SHARES = (0.25, 0.5, 1.0)  # the table's "best validation NDCG@10 by this share of the budget" columns


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}_seed{seed}"


def train_one(name: str, flags: list[str], seed: int, args: argparse.Namespace) -> Path:
    """One trainer.py run in its own folder; skipped when finished, resumed when a last.pt is there."""
    out = run_dir(Path(args.out), name, seed)
    if (out / "results.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "trainer.py"), *flags, "--seed", str(seed), "--data_dir", args.data_dir,
               "--max_minutes", str(args.max_minutes), "--checkpoint_dir", str(out),
               "--metadata_path", str(out / "metadata.json"), "--no-progress"]
    if (out / "last.pt").is_file():
        command += ["--resume", str(out / "last.pt")]
    with open(out / "train.log", "a") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return out


def best_by(history: list[dict], seconds: float) -> float | None:
    """The best validation NDCG@10 among the epochs that ended within `seconds` of training."""
    values = [r["val_NDCG@10"] for r in history if "val_NDCG@10" in r and r["train_seconds"] <= seconds]
    return max(values) if values else None


def table(results: dict[str, list[dict]], budget_minutes: float) -> str:
    """Markdown: per configuration, test figures (mean and spread over seeds), validation NDCG@10 reached by each
    share of the budget, epochs and seconds per epoch, peak memory and the machine."""
    shares = " | ".join(f"val NDCG@10 by {share * budget_minutes:g} min" for share in BUDGET_SHARES)
    lines = [f"| configuration | seeds | test NDCG@10 (spread) | test HR@10 | {shares} | epochs (best) | s/epoch "
             "| peak RSS MB | machine |",
             "|---|---|---|---|" + "---|" * len(BUDGET_SHARES) + "---|---|---|---|"]
    for name, runs in results.items():
        ndcg = [r["test"]["NDCG@10"] for r in runs]
        spread = f" ({max(ndcg) - min(ndcg):.4f})" if len(runs) > 1 else ""
        reached = []
        for share in BUDGET_SHARES:
            values = [best_by(r["history"], share * budget_minutes * 60) for r in runs]
            reached.append(f"{statistics.mean(values):.4f}" if None not in values else "-")
        epochs = "/".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in runs)
        per_epoch = statistics.mean(r["train_seconds"] / r["epochs_run"] for r in runs)
        rss = max(r.get("peak_rss_mb") or float("nan") for r in runs)
        seeds = ",".join(str(r["train_config"]["seed"]) for r in runs)
        lines.append(f"| {name} | {seeds} | {statistics.mean(ndcg):.4f}{spread} "
                     f"| {statistics.mean(r['test']['HR@10'] for r in runs):.4f} | {' | '.join(reached)} "
                     f"| {epochs} | {per_epoch:.0f} | {rss:.0f} | {runs[0]['device']}, {runs[0]['machine']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--out", default=str(REPO / "runs" / "time_to_quality"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max_minutes", type=float, default=15.0, help="training budget of every run")
    parser.add_argument("--config", nargs=2, action="append", metavar=("NAME", "FLAGS"),
                        help="a configuration: a name (letters, digits, _) and its trainer.py flags in one string "
                             f"(repeatable; none: {', '.join(PRESETS)})")
    parser.add_argument("--table_only", action="store_true", help="only re-read the finished runs")
    args = parser.parse_args()
    configs = {name: shlex.split(flags) for name, flags in (args.config or PRESETS.items())}
    bad = [name for name in configs if not name.replace("_", "").isalnum()]
    if bad:
        parser.error(f"configuration names must be letters, digits and _: {bad}")

    if not args.table_only:
        for seed in args.seeds:  # seed-major: an interrupted benchmark has every configuration for the first seeds
            for name, flags in configs.items():
                print(f"done: {train_one(name, flags, seed, args)}", flush=True)
    out = Path(args.out)
    results = {name: [json.loads(path.read_text()) for seed in args.seeds
                      if (path := run_dir(out, name, seed) / "results.json").is_file()] for name in configs}
    results = {name: runs for name, runs in results.items() if runs}
    if not results:
        sys.exit(f"error: no finished runs under {out}: run without --table_only first")
    markdown = table(results, args.max_minutes)
    (out / "time_to_quality.md").write_text(markdown + "\n")
    plot_time_to_quality({name: [r["history"] for r in runs] for name, runs in results.items()},
                         out / "time_to_quality.png", title=f"ML-1M, {args.max_minutes:g}-minute budget per run")
    print(markdown)


if __name__ == "__main__":
    main()
