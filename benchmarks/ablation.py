r"""Ablation on the real ML-1M: what each side-information part and each auxiliary task adds to plain BERT4Rec.

Every row is the same trainer.py run at the same training budget (the shared flags, e.g. a configuration file,
plus --max_minutes/--max_epochs), differing only in the switches below, for each seed. Test figures come
from each run's results.json (best-validation checkpoint, EVALUATION.md protocol). The markdown table gives the
mean over seeds and, with more than one seed, the seed-to-seed spread (max - min) of NDCG@10.

    python benchmarks/ablation.py --data_dir path/to/ml-1m --seeds 0 1 --max_minutes 30 \
        --out runs/ablation -- @configs/seed.txt --batch_size 256 --learning_rate 1e-3 --warmup_steps 200 \
        --lr_schedule constant --max_epochs 200 --patience 20 --next_item_weight 0.1 --next_item_crop 0.5
    python benchmarks/ablation.py --out runs/ablation --table_only     # re-read finished runs

--parallel N runs N trainings at once (useful on a GPU, where one small model leaves the device idle). The
shared flags above are the seed's model with the cloze training of docs/RESULTS.md's ablation table. PLAIN switches
--causal off, so on a causal configuration file the full-model rows would differ from the others in that too.
"""

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from trainer import machine_description  # noqa: E402

PLAIN = ["--no-use_item_side_info", "--no-use_user_tokens", "--no-use_temporal", "--next_item_weight", "0",
         "--rating_prediction_weight", "0", "--user_preference_weight", "0", "--no-causal"]  # cloze BERT4Rec


def with_flags(*changes: str) -> list[str]:
    """Plain BERT4Rec with some parts switched back on (a later flag overrides an earlier one)."""
    return [*PLAIN, *changes]


ROWS = {
    "plain BERT4Rec": with_flags(),
    "+ item side info (genres, year)": with_flags("--use_item_side_info"),
    "+ user tokens and cross-attention": with_flags("--use_user_tokens"),
    "+ temporal (day of year)": with_flags("--use_temporal"),
    "+ next-item task": with_flags("--next_item_weight", "1.0"),
    "+ rating task": with_flags("--rating_prediction_weight", "0.3"),
    "+ user-preference task": with_flags("--user_preference_weight", "0.2"),
    "full model": [],
    # the seed's next-item weight (1.0) over-fits on ML-1M; 0.1 gives its targets the cloze targets' weight each
    "full model, next-item weight 0.1": ["--next_item_weight", "0.1"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_one(name: str, seed: int, args: argparse.Namespace) -> Path:
    out = Path(args.out) / f"{slug(name)}_seed{seed}"
    if (out / "results.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "trainer.py"), *args.trainer_args, *ROWS[name], "--seed", str(seed),
               "--data_dir", args.data_dir, "--checkpoint_dir", str(out), "--metadata_path", str(out / "metadata.json"),
               "--no-progress"]
    if args.max_minutes:
        command += ["--max_minutes", str(args.max_minutes)]
    with open(out / "train.log", "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return out


def best_seconds(result: dict) -> float | None:
    """Training seconds up to the end of the best-validation epoch (None for runs whose history lacks them)."""
    record = next((r for r in result.get("history", []) if r["epoch"] == result["best_epoch"]), {})
    return record.get("train_seconds")


def table(out_dir: Path, seeds: list[int], machine: str) -> str:
    """Markdown table of the finished runs: mean over seeds, NDCG@10 spread (max - min) per row, and each row's
    change against plain BERT4Rec, marked "within spread" when smaller than the largest spread measured.
    The machine column is the one results.json records; `machine` (this one) stands in for runs without it."""
    found = {}
    for name in ROWS:
        results = [json.loads(p.read_text()) for seed in seeds
                   if (p := out_dir / f"{slug(name)}_seed{seed}" / "results.json").is_file()]
        if results:
            found[name] = results
    spreads = [max(n) - min(n) for results in found.values()
               if len(n := [r["test"]["NDCG@10"] for r in results]) > 1]
    yardstick = max(spreads) if spreads else None
    plain = statistics.mean(r["test"]["NDCG@10"] for r in found["plain BERT4Rec"]) if "plain BERT4Rec" in found \
        else None
    lines = ["| configuration | seeds | HR@10 | NDCG@10 | HR@20 | NDCG@20 | NDCG@10 spread | NDCG@10 vs plain "
             "| rating RMSE (bias baseline) | epochs (best) | train min | min to best | wall min | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, results in found.items():
        def mean(key: str, results=results) -> float:
            return statistics.mean(r["test"][key] for r in results)

        ndcg = [r["test"]["NDCG@10"] for r in results]
        spread = f"{max(ndcg) - min(ndcg):.4f}" if len(results) > 1 else "-"
        if plain is None or name == "plain BERT4Rec":
            change = "-"
        else:
            change = f"{(mean('NDCG@10') - plain) / plain:+.1%}"
            if yardstick is not None and abs(mean("NDCG@10") - plain) < yardstick:
                change += " (within spread)"
        rmse = (f"{mean('rating_rmse'):.4f} ({mean('bias_baseline_rmse'):.4f})"
                if all("rating_rmse" in r["test"] for r in results) else "-")
        epochs = "/".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in results)
        minutes = statistics.mean(r["train_seconds"] for r in results) / 60
        to_best = [best_seconds(r) for r in results]
        to_best = f"{statistics.mean(to_best) / 60:.1f}" if None not in to_best else "-"
        wall = statistics.mean(r["wall_seconds"] for r in results) / 60
        used = ",".join(str(r["train_config"]["seed"]) for r in results)
        lines.append(f"| {name} | {used} | {mean('HR@10'):.4f} | {mean('NDCG@10'):.4f} | {mean('HR@20'):.4f} "
                     f"| {mean('NDCG@20'):.4f} | {spread} | {change} | {rmse} | {epochs} | {minutes:.1f} "
                     f"| {to_best} | {wall:.1f} | {results[0]['device']}, {results[0].get('machine', machine)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--out", default=str(REPO / "runs" / "ablation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max_minutes", type=float, help="training budget of every run")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument("trainer_args", nargs="*", help="flags passed to every trainer.py run (after --)")
    args = parser.parse_args()
    machine = machine_description(torch.device("cpu"))  # stands in for runs that did not record theirs

    if not args.table_only:
        jobs = [(name, seed) for seed in args.seeds for name in args.rows]
        with ThreadPoolExecutor(args.parallel) as pool:
            for out in pool.map(lambda job: run_one(*job, args), jobs):
                print(f"done: {out}", flush=True)
    markdown = table(Path(args.out), args.seeds, machine)
    (Path(args.out) / "ablation.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
