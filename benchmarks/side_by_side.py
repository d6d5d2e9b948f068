"""Several trainer.py trainings side by side on one device, then one table of their results.

Each run is a name and its trainer.py flags, given on the command line (`--run NAME="FLAGS"`, repeatable) or in a
file (`--runs_file`: one `name: flags` per line, # starts a comment). Flags after `--` are common to every run and
come before each run's own, so a run's flag wins. All runs start at once, each in --out/<name> (its checkpoints,
results.json, metadata.json and train.log, which begins with the command); a run whose results.json is there
already is read, not trained again. Every run's flags are checked with the trainer's own parser before any starts.
When all have ended (or --guard_seconds has stopped the rest), the script prints and writes --out/side_by_side.md:
per run the best validation NDCG@10 and the test NDCG@10 and HR@10 of its best-validation checkpoint (from its
results.json), and per group of runs named <group>_seed<N> the mean and the spread (max - min) over its seeds.

    python benchmarks/side_by_side.py --out runs/best_vs_plain --seeds 0 1 2 \\
        --run best="" --run plain="--no-use_item_side_info --no-use_user_tokens --no-use_temporal \\
        --rating_prediction_weight 0 --user_preference_weight 0" -- @configs/best.txt --device cuda
    python benchmarks/side_by_side.py --out runs/t100 --runs_file runs.txt --guard_seconds 560 -- --device cuda
    python benchmarks/side_by_side.py --out runs/t100 --runs_file runs.txt --table_only

Useful on a GPU, where one small model leaves most of the device idle; on a CPU the runs share its cores
(--threads each, by default the cores divided among the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train_config import ConfigError, parse_args, validate_config  # noqa: E402

RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
SEED_SUFFIX = re.compile(r"(.+)_seed\d+")


def parse_run(text: str) -> tuple[str, list[str]]:
    """`NAME=FLAGS` (one --run argument) -> (name, flags)."""
    name, equals, flags = text.partition("=")
    if not equals or not RUN_NAME.fullmatch(name.strip()):
        raise ConfigError(f"--run {text!r}: write NAME=\"FLAGS\", NAME of letters, digits, _ . -")
    return name.strip(), shlex.split(flags)


def read_runs_file(path: Path) -> dict[str, list[str]]:
    """Runs from a file: one `name: flags` per line; blank lines and # comments are skipped."""
    runs = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, flags = line.partition(":")
        if not colon or not RUN_NAME.fullmatch(name.strip()):
            raise ConfigError(f"{path}:{number}: write `name: flags`, name of letters, digits, _ . -")
        add_run(runs, name.strip(), shlex.split(flags, comments=True))
    return runs


def add_run(runs: dict[str, list[str]], name: str, flags: list[str]) -> None:
    if name in runs:
        raise ConfigError(f"run {name} is given twice: give each run its own name")
    runs[name] = flags


def with_seeds(runs: dict[str, list[str]], seeds: list[int]) -> dict[str, list[str]]:
    """Each run once per seed, named <name>_seed<N>, with --seed N last."""
    return {f"{name}_seed{seed}": [*flags, "--seed", str(seed)] for name, flags in runs.items() for seed in seeds}


def trainer_argv(flags: list[str], common: list[str], data_dir: str, out: Path) -> list[str]:
    """trainer.py's arguments for one run: the data, the common flags, the run's own, its folder."""
    return ["--data_dir", data_dir, *common, *flags, "--checkpoint_dir", str(out), "--no-progress"]


def check_flags(runs: dict[str, list[str]], common: list[str], data_dir: str, out: Path) -> None:
    """Refuse the whole set before anything starts when one run's flags would be refused by trainer.py."""
    for name, flags in runs.items():
        try:
            validate_config(parse_args(trainer_argv(flags, common, data_dir, out / name), use_device_defaults=True,
                                       probe=False))
        except ConfigError as error:
            raise ConfigError(f"run {name}: {error}") from None
        except SystemExit:  # the parser has printed its message
            raise ConfigError(f"run {name}: trainer.py refuses its flags (the message above)") from None


def launch(name: str, argv: list[str], out: Path, threads: int) -> subprocess.Popen:
    """Start one training in the background, its output in <out>/<name>/train.log."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "trainer.py"), *argv]
    with open(folder / "train.log", "w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for(processes: dict[str, subprocess.Popen], guard_seconds: float | None) -> dict[str, int]:
    """Wait until every training has ended; after guard_seconds, stop those still running. Returns exit codes."""
    started = time.monotonic()
    running = dict(processes)
    while running:
        for name, process in list(running.items()):
            if process.poll() is not None:
                print(f"ended: {name} (exit {process.returncode}) after {time.monotonic() - started:.0f} s", flush=True)
                del running[name]
        if running and guard_seconds is not None and time.monotonic() - started > guard_seconds:
            for name, process in running.items():
                process.kill()
                process.wait()
                print(f"stopped: {name} (still running after --guard_seconds {guard_seconds:g})", flush=True)
            break
        time.sleep(1)
    return {name: process.returncode for name, process in processes.items()}


def read_results(runs: list[str], out: Path) -> dict[str, dict]:
    """Each finished run's results.json (runs without one are left out)."""
    return {name: json.loads(path.read_text()) for name in runs if (path := out / name / "results.json").is_file()}


def run_table(runs: list[str], results: dict[str, dict]) -> list[str]:
    lines = ["| run | best val NDCG@10 | test NDCG@10 | test HR@10 | epochs (best) | train min | device |",
             "|---|---|---|---|---|---|---|"]
    for name in runs:
        if name not in results:
            lines.append(f"| {name} | not finished | | | | | |")
            continue
        r = results[name]
        lines.append(f"| {name} | {r['validation']['NDCG@10']:.4f} | {r['test']['NDCG@10']:.4f} "
                     f"| {r['test']['HR@10']:.4f} | {r['epochs_run']} ({r['best_epoch']}) "
                     f"| {r['train_seconds'] / 60:.1f} | {r['device']}, {r['machine']} |")
    return lines


def groups(names: list[str]) -> dict[str, list[str]]:
    """Runs named <group>_seed<N>, by group (groups of one run are left out)."""
    found: dict[str, list[str]] = {}
    for name in names:
        if match := SEED_SUFFIX.fullmatch(name):
            found.setdefault(match.group(1), []).append(name)
    return {group: members for group, members in found.items() if len(members) > 1}


def group_table(results: dict[str, dict]) -> list[str]:
    lines = ["| group | seeds finished | best val NDCG@10 | test NDCG@10 (spread) | test HR@10 |",
             "|---|---|---|---|---|"]
    for group, members in groups(list(results)).items():
        val = [results[name]["validation"]["NDCG@10"] for name in members]
        ndcg = [results[name]["test"]["NDCG@10"] for name in members]
        hit = [results[name]["test"]["HR@10"] for name in members]
        lines.append(f"| {group} | {len(members)} | {statistics.mean(val):.4f} | {statistics.mean(ndcg):.4f} "
                     f"({max(ndcg) - min(ndcg):.4f}) | {statistics.mean(hit):.4f} |")
    return lines


def summary(runs: list[str], out: Path) -> str:
    """The markdown of the runs' results: one row per run and, when runs share a <group>_seed<N> name, per group."""
    results = read_results(runs, out)
    lines = run_table(runs, results)
    if groups(list(results)):
        lines += ["", *group_table(results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="one folder per run is made in it")
    parser.add_argument("--run", action="append", default=[], metavar='NAME="FLAGS"', help="a run (repeatable)")
    parser.add_argument("--runs_file", type=Path, help="runs, one `name: flags` per line (# comments)")
    parser.add_argument("--seeds", type=int, nargs="+", help="each run once per seed, named <name>_seed<N>")
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--threads", type=int, help="OMP threads per training (default: the cores / the runs)")
    parser.add_argument("--guard_seconds", type=float,
                        help="stop the trainings still running after this many seconds, then summarise")
    parser.add_argument("--table_only", action="store_true", help="only summarise the runs found under --out")
    parser.add_argument("common", nargs="*", help="trainer.py flags of every run (after --)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        runs = read_runs_file(args.runs_file) if args.runs_file else {}
        for text in args.run:
            add_run(runs, *parse_run(text))
        if not runs:
            raise ConfigError("no runs: give --run NAME=\"FLAGS\" or --runs_file")
        if args.seeds:
            runs = with_seeds(runs, args.seeds)
        todo = {name: flags for name, flags in runs.items() if not (out / name / "results.json").is_file()}
        if not args.table_only:
            check_flags(todo, args.common, args.data_dir, out)
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    failed = []
    if not args.table_only and todo:
        threads = args.threads or max(1, (os.cpu_count() or 1) // len(todo))
        print(f"{len(todo)} trainings started ({len(runs) - len(todo)} finished before), {threads} threads each",
              flush=True)
        processes = {name: launch(name, trainer_argv(flags, args.common, args.data_dir, out / name), out, threads)
                     for name, flags in todo.items()}
        failed = [name for name, code in wait_for(processes, args.guard_seconds).items() if code != 0]
    markdown = summary(list(runs), out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "side_by_side.md").write_text(markdown + "\n")
    print(markdown)
    if failed:
        print(f"error: {', '.join(failed)} did not finish: see train.log in their folders", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
