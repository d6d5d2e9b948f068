"""Issue 18's causal search in one GPU lease: several trainings side by side on one GPU, each under the same
--max_minutes with bf16 autocast and the budget-ending warmup-stable-decay schedule.

Every run is `@configs/cpu_causal.txt` (causal, wsd, next-item weight 0.1) made larger and longer, plus its own
flags (the sets below). The script waits for all of them, writes a markdown table (test figures from each run's
best-validation checkpoint, as trainer.py reports them), and packs under --out what a re-evaluation elsewhere needs:
every run's results.json and train.log (results.tgz) and the first run's best weights without the optimizer
state, split in 15 MB parts (`cat best_weights.pt.part* > best_model.pt`) with its metadata.json.

--set names the dictionary of runs: lease1 and lease2 are the two calls of 2026-11-30 (docs/RESULTS.md, "Causal
training on a GPU"), lease3 the three-seed comparison prepared for the ninth session's lease (not run), lease4
and lease5 the twelfth session's (docs/RESULTS.md, "Twelfth session"), lease6, lease7 and lease8 prepared for
the next (lease8: the thirteenth session's cosine item head).

    python benchmarks/gpu_causal_search.py --set lease1 --data_dir .devdata/ml-1m --out $OUT --minutes 6.5
    python benchmarks/gpu_causal_search.py --set lease3 --runs_dir runs/gpu_causal3 --data_dir .devdata/ml-1m \
        --out $OUT --minutes 8 --guard_seconds 560
    python benchmarks/gpu_causal_search.py --set lease4 --runs_dir runs/gpu_causal4 --data_dir .devdata/ml-1m \
        --out $OUT --minutes 7.6 --guard_seconds 545
    python benchmarks/gpu_causal_search.py --set lease6 --runs_dir runs/gpu_causal6 --data_dir .devdata/ml-1m \
        --out $OUT --minutes 7.6 --guard_seconds 545   # then lease7 the same way
    python benchmarks/gpu_causal_search.py --set lease2 --runs_dir runs/gpu_causal2 --table_only   # re-read
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMON = ["@configs/cpu_causal.txt", "--amp", "bf16", "--dropout", "0.2", "--batch_size", "128",
          "--max_epochs", "400", "--patience", "400"]  # the budget ends each run, not early stopping
H256 = ["--hidden_size", "256", "--num_heads", "4", "--num_layers", "4", "--learning_rate", "1e-3"]
PLAIN = ["--no-use_item_side_info", "--no-use_user_tokens", "--no-use_temporal", "--rating_prediction_weight", "0",
         "--user_preference_weight", "0"]  # causal, so the next-item task stays on: SASRec with a full softmax

# name: (flags after COMMON, seeds); --set picks one dictionary
LEASE1 = {
    "full_h256_t200": ([*H256, "--seq_length", "200"], [0, 1, 2]),
    "plain_h256_t200": ([*H256, "--seq_length", "200", *PLAIN], [0]),
    "full_h256_t200_nouser": ([*H256, "--seq_length", "200", "--no-use_user_tokens"], [0]),
    "full_h256_t100": ([*H256, "--seq_length", "100"], [0]),
    "full_h128_t200": (["--hidden_size", "128", "--num_heads", "2", "--num_layers", "2", "--seq_length", "200"], [0]),
    "full_h64_t200": (["--seq_length", "200"], [0]),
}
# the first lease's runs over-fit the next-item targets (one fixed target per window, mostly one window per user at
# T 200): the crop that cured it for the cloze model, a smaller next-item weight, shorter windows
CROP = ["--next_item_crop", "0.5"]
LEASE2 = {
    "full_h256_t200_crop": ([*H256, "--seq_length", "200", *CROP], [0]),
    "full_h256_t100_crop": ([*H256, "--seq_length", "100", *CROP], [0]),
    "full_h256_t50_crop": ([*H256, "--seq_length", "50", *CROP], [0]),
    "plain_h256_t100_crop": ([*H256, "--seq_length", "100", *PLAIN, *CROP], [0]),
    "full_h256_t100": ([*H256, "--seq_length", "100"], [0]),
    "full_h256_t200_next001": ([*H256, "--seq_length", "200", "--next_item_weight", "0.01"], [0]),
    "full_h256_t100_crop_d04": ([*H256, "--seq_length", "100", *CROP, "--dropout", "0.4"], [0]),
    "full_h128_t100_crop": (["--hidden_size", "128", "--num_heads", "2", "--num_layers", "2", "--seq_length", "100",
                             *CROP], [0]),
}
# the next lease: three seeds of the best row on validation (configs/gpu_causal.txt: h256, T 100, crop) and of
# plain at the same size and budget, and two more seeds of T 200 with the crop (T 50, 100 and 200 were within the
# single-seed scatter on test)
GPU_CAUSAL = ["@configs/gpu_causal.txt"]
LEASE3 = {
    "full_h256_t100_crop": (GPU_CAUSAL, [0, 1, 2]),
    "plain_h256_t100_crop": ([*GPU_CAUSAL, *PLAIN], [0, 1, 2]),
    "full_h256_t200_crop": ([*GPU_CAUSAL, "--seq_length", "200"], [1, 2]),
}
# the CPU's three-seed configuration (configs/h256_t50_crop12.txt, 12 epochs) was best at its last epoch in all
# six runs: the same at 20 epochs, full and plain, three seeds each, and T 100 (lease2's best on validation) at the
# same epochs; the budget is epochs here, so a CPU can repeat any row (--minutes is only the lease's safety net)
BEST = ["@configs/h256_t50_crop12.txt"]  # the dot-product configuration chosen until lease8; lease4-7 vary it


def epochs(count: int) -> list[str]:
    """An epoch budget that early stopping cannot cut short."""
    return ["--max_epochs", str(count), "--patience", str(count)]


T50_E20 = [*BEST, *epochs(20)]
LEASE4 = {
    "full_h256_t50_crop_e20": (T50_E20, [0, 1, 2]),
    "plain_h256_t50_crop_e20": ([*T50_E20, *PLAIN], [0, 1, 2]),
    "full_h256_t100_crop_e20": ([*T50_E20, "--seq_length", "100"], [0, 1, 2]),
}
# lease4's T 50 runs plateaued at 20 epochs (validation below the CPU's 12), T 100 still rose at its last epoch:
# T 100 at 30 epochs, full with dropout 0.2 and 0.3, plain, three seeds each
T100_E30 = [*BEST, "--seq_length", "100", *epochs(30)]
LEASE5 = {
    "full_h256_t100_crop_e30": (T100_E30, [0, 1, 2]),
    "full_h256_t100_crop_e30_d03": ([*T100_E30, "--dropout", "0.3"], [0, 1, 2]),
    "plain_h256_t100_crop_e30": ([*T100_E30, *PLAIN], [0, 1, 2]),
}
# prepared for the next lease: other regularisers at the chosen 12-epoch budget, against the chosen row on the same
# machine (the CPU's seeds and the GPU's are different random streams); lease6 and lease7 fit one lease together
T50_E12 = BEST
LEASE6 = {
    "full_h256_t50_crop_e12": (T50_E12, [0, 1, 2]),
    "full_h256_t50_crop_e12_userdrop05": ([*T50_E12, "--user_dropout", "0.5"], [0, 1, 2]),
    "full_h384_t50_crop_e12_d03": ([*T50_E12, "--hidden_size", "384", "--num_heads", "6", "--dropout", "0.3"],
                                   [0, 1, 2]),
}
LEASE7 = {
    "full_h256_t50_crop_e12_wd01": ([*T50_E12, "--weight_decay", "0.1"], [0, 1, 2]),
    "full_h256_t50_crop075_e12": ([*T50_E12, "--next_item_crop", "0.75"], [0, 1, 2]),
    "full_h256_t50_crop_e16_d03": ([*T50_E12, *epochs(16), "--dropout", "0.3"], [0, 1, 2]),
}
# the thirteenth session's CPU lead, the cosine item head (--cosine_temperature 0.05): its three seeds on the GPU,
# plain BERT4Rec with the same head (the side information's worth with it), and the head at T 100 for 20 epochs
COS12 = ["@configs/h256_t50_cos12.txt"]  # BEST plus --cosine_temperature 0.05
LEASE8 = {
    "full_h256_t50_crop_e12_cos005": (COS12, [0, 1, 2]),
    "plain_h256_t50_crop_e12_cos005": ([*COS12, *PLAIN], [0, 1, 2]),
    "full_h256_t100_crop_e20_cos005": ([*COS12, "--seq_length", "100", *epochs(20)], [0, 1, 2]),
}
SETS = {"lease1": LEASE1, "lease2": LEASE2, "lease3": LEASE3, "lease4": LEASE4, "lease5": LEASE5, "lease6": LEASE6,
        "lease7": LEASE7, "lease8": LEASE8}


def run_dirs(runs: dict, runs_dir: Path, only: list[str] | None):
    for name, (flags, seeds) in runs.items():
        if only and name not in only:
            continue
        for seed in seeds:
            yield name, flags, seed, runs_dir / f"{name}_seed{seed}"


def launch(name: str, flags: list[str], seed: int, out: Path, args: argparse.Namespace) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "trainer.py"), *COMMON, *flags, *args.extra, "--seed", str(seed),
               "--device", args.device, "--max_minutes", str(args.minutes), "--data_dir", args.data_dir,
               "--checkpoint_dir", str(out), "--no-progress"]
    log = open(out / "train.log", "w")
    log.write(" ".join(command) + "\n")
    log.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def table(runs: dict, runs_dir: Path) -> str:
    lines = ["| run | seeds | test NDCG@10 (spread) | test HR@10 | NDCG@20 | HR@20 | best val NDCG@10 | epochs (best) "
             "| s/epoch | train min | rating RMSE | machine |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in runs:
        results = [json.loads(p.read_text()) for p in sorted(runs_dir.glob(f"{name}_seed*/results.json"))]
        if not results:
            lines.append(f"| {name} | - | not finished | | | | | | | | | |")
            continue

        def mean(key: str, results=results) -> float:
            return statistics.mean(r["test"][key] for r in results)

        ndcg = [r["test"]["NDCG@10"] for r in results]
        spread = f" ({max(ndcg) - min(ndcg):.4f})" if len(ndcg) > 1 else ""
        val = " / ".join(f"{r['validation']['NDCG@10']:.4f}" for r in results)
        epochs = " / ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in results)
        per_epoch = statistics.mean(r["train_seconds"] / max(r["epochs_run"], 1) for r in results)
        minutes = statistics.mean(r["train_seconds"] for r in results) / 60
        rmse = f"{mean('rating_rmse'):.4f}" if all("rating_rmse" in r["test"] for r in results) else "-"
        seeds = ",".join(str(r["train_config"]["seed"]) for r in results)
        lines.append(f"| {name} | {seeds} | {mean('NDCG@10'):.4f}{spread} | {mean('HR@10'):.4f} "
                     f"| {mean('NDCG@20'):.4f} | {mean('HR@20'):.4f} | {val} | {epochs} | {per_epoch:.1f} "
                     f"| {minutes:.1f} | {rmse} | {results[0]['device']}, {results[0]['machine']} |")
    return "\n".join(lines)


def pack(runs_dir: Path, out: Path, first: Path) -> None:
    """results.json and train.log of every run, and the first run's best weights (optimizer state dropped)."""
    import torch

    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        for path in sorted(runs_dir.glob("*/*")):
            if path.name in ("results.json", "train.log"):
                tar.add(path, arcname=str(path.relative_to(runs_dir.parent)))
    best = first / "best_model.pt"
    if not best.is_file():
        print(f"no {best}: no weights packed")
        return
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        checkpoint.pop(key, None)
    torch.save(checkpoint, first / "best_weights.pt")
    data = (first / "best_weights.pt").read_bytes()
    part = 15 * 2 ** 20
    for index in range(0, len(data), part):
        (out / f"best_weights.pt.part{index // part:02d}").write_bytes(data[index:index + part])
    if (first / "metadata.json").is_file():
        (out / "metadata.json").write_bytes((first / "metadata.json").read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--runs_dir", default="runs/gpu_causal")
    parser.add_argument("--out", default=None, help="folder for results.tgz and the packed weights")
    parser.add_argument("--minutes", type=float, default=6.8, help="--max_minutes of every run")
    parser.add_argument("--guard_seconds", type=float, default=560,
                        help="stop any training still running after this many seconds (the lease's end)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads per training")
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--set", choices=SETS, default="lease1", help="which dictionary of runs")
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument("extra", nargs="*", help="flags added to every run (after --), e.g. for a smoke test")
    args = parser.parse_args()
    runs = SETS[args.set]
    runs_dir = Path(args.runs_dir)
    if not args.table_only:
        started = time.monotonic()
        processes = [launch(name, flags, seed, out, args)
                     for name, flags, seed, out in run_dirs(runs, runs_dir, args.only)
                     if not (out / "results.json").is_file()]
        print(f"{len(processes)} trainings started", flush=True)
        while any(p.poll() is None for p in processes):  # the guard: the lease's end stops what still runs
            if time.monotonic() - started > args.guard_seconds:
                for p in processes:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                print("guard: stopped the trainings still running", flush=True)
                break
            time.sleep(2)
        print(f"all done after {time.monotonic() - started:.0f} s; exit codes {[p.returncode for p in processes]}")
    text = table(runs, runs_dir)
    print(text)
    (runs_dir / "table.md").write_text(text + "\n")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text + "\n")
        _, _, _, first = next(run_dirs(runs, runs_dir, args.only))
        pack(runs_dir, out, first)


if __name__ == "__main__":
    main()
