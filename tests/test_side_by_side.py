"""benchmarks/side_by_side.py: runs from the command line and from a file, the tables on hand-made results.json
files, and two tiny trainings side by side on a synthetic ML-1M folder."""

import json
from pathlib import Path

import pytest
from conftest import TINY

from benchmarks.side_by_side import (
    check_flags,
    main,
    parse_run,
    read_runs_file,
    summary,
    trainer_argv,
    with_seeds,
)
from train_config import ConfigError


def test_a_run_on_the_command_line_is_a_name_and_its_flags():
    # the shell has removed the quotes of --run t100="--seq_length 100 --dropout 0.3"
    assert parse_run("t100=--seq_length 100 --dropout 0.3") == ("t100", ["--seq_length", "100", "--dropout", "0.3"])
    assert parse_run("best=") == ("best", [])
    assert parse_run("plain=--no-causal") == ("plain", ["--no-causal"])
    for bad in ("no equals sign", "bad name=--causal", "=--causal"):
        with pytest.raises(ConfigError, match="NAME="):
            parse_run(bad)


def test_a_runs_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("# the chosen row and a longer window\n\nbest: @configs/best.txt\n"
                    "t100: @configs/best.txt --seq_length 100  # twice the window\n  empty:\n")
    assert read_runs_file(path) == {"best": ["@configs/best.txt"],
                                    "t100": ["@configs/best.txt", "--seq_length", "100"], "empty": []}


@pytest.mark.parametrize("text, message", [("best @configs/best.txt\n", "runs.txt:1: write `name: flags`"),
                                           ("# c\nbad name: --causal\n", "runs.txt:2: write `name: flags`"),
                                           ("a: --causal\na: --no-causal\n", "run a is given twice")])
def test_a_malformed_runs_file_is_refused_by_line(tmp_path, text, message):
    (tmp_path / "runs.txt").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_runs_file(tmp_path / "runs.txt")


def test_seeds_make_one_run_per_seed_named_for_its_group():
    assert with_seeds({"best": [], "plain": ["--no-causal"]}, [0, 2]) == {
        "best_seed0": ["--seed", "0"], "best_seed2": ["--seed", "2"],
        "plain_seed0": ["--no-causal", "--seed", "0"], "plain_seed2": ["--no-causal", "--seed", "2"]}


def test_common_flags_come_before_a_runs_own_so_the_run_wins(tmp_path):
    argv = trainer_argv(["--dropout", "0.3"], ["@configs/best.txt", "--dropout", "0.2"], "data", tmp_path / "a")
    assert argv == ["--data_dir", "data", "@configs/best.txt", "--dropout", "0.2", "--dropout", "0.3",
                    "--checkpoint_dir", str(tmp_path / "a"), "--no-progress"]


def test_a_run_with_flags_the_trainer_refuses_stops_the_whole_set(tmp_path, capsys):
    check_flags({"fine": ["--seq_length", "100"]}, ["--device", "cpu"], str(tmp_path), tmp_path)
    with pytest.raises(ConfigError, match="run typo: trainer.py refuses its flags"):
        check_flags({"fine": [], "typo": ["--seq_lenght", "100"]}, [], str(tmp_path), tmp_path)
    assert "--seq_lenght" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="run zero: --batch_size must be positive"):
        check_flags({"zero": ["--batch_size", "0"]}, [], str(tmp_path), tmp_path)
    assert main(["--out", str(tmp_path / "runs"), "--run", "zero=--batch_size 0"]) == 2
    assert not (tmp_path / "runs").exists()  # nothing started


def write_result(folder: Path, val: float, test_ndcg: float, test_hr: float) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "validation": {"NDCG@10": val}, "test": {"NDCG@10": test_ndcg, "HR@10": test_hr}, "epochs_run": 12,
        "best_epoch": 11, "train_seconds": 90.0, "device": "cuda", "machine": "m"}))


def test_summary_rows_per_run_and_mean_and_spread_per_seed_group(tmp_path):
    write_result(tmp_path / "best_seed0", 0.21, 0.20, 0.40)
    write_result(tmp_path / "best_seed1", 0.20, 0.19, 0.36)
    write_result(tmp_path / "plain_seed0", 0.18, 0.17, 0.33)
    lines = summary(["best_seed0", "best_seed1", "plain_seed0", "t100"], tmp_path).splitlines()
    assert lines[2] == "| best_seed0 | 0.2100 | 0.2000 | 0.4000 | 12 (11) | 1.5 | cuda, m |"
    assert lines[4].startswith("| plain_seed0 | 0.1800 | 0.1700 | 0.3300 |")
    assert lines[5] == "| t100 | not finished | | | | | |"
    # one group of two seeds (plain has one finished seed: no group row): means 0.205, 0.195, 0.38; spread 0.01
    assert lines[6:] == ["", "| group | seeds finished | best val NDCG@10 | test NDCG@10 (spread) | test HR@10 |",
                         "|---|---|---|---|---|", "| best | 2 | 0.2050 | 0.1950 (0.0100) | 0.3800 |"]


def test_without_seed_groups_there_is_only_the_run_table(tmp_path):
    write_result(tmp_path / "a", 0.21, 0.20, 0.40)
    assert len(summary(["a"], tmp_path).splitlines()) == 3


def test_two_tiny_trainings_side_by_side(synthetic_ml1m_dir, tmp_path):
    out = tmp_path / "runs"
    runs_file = tmp_path / "runs.txt"
    runs_file.write_text("h16: --hidden_size 16\n")
    status = main(["--out", str(out), "--data_dir", str(synthetic_ml1m_dir), "--runs_file", str(runs_file),
                   "--run", "h32=--hidden_size 32", "--threads", "1", "--",
                   *TINY, "--max_epochs", "1", "--device", "cpu"])
    assert status == 0
    for name, hidden in (("h16", 16), ("h32", 32)):
        results = json.loads((out / name / "results.json").read_text())
        assert results["model_config"]["hidden_size"] == hidden and results["epochs_run"] == 1
        assert (out / name / "train.log").read_text().splitlines()[0].endswith(f"{out / name} --no-progress")
    table = (out / "side_by_side.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| h16", "| h32"]
    # finished runs are read, not trained again
    (out / "h16" / "train.log").write_text("kept\n")
    assert main(["--out", str(out), "--data_dir", str(synthetic_ml1m_dir), "--runs_file", str(runs_file)]) == 0
    assert (out / "h16" / "train.log").read_text() == "kept\n"
