"""The bad-input and fault matrix: the CLIs (trainer.py, data_processor.py, inference.py) and the engine's API,
driven the way a careless user or an adversarial tester would.

A refused input asserts its exit status (or the project's own exception), exactly one line on stderr, no
traceback, and that nothing was written. A fault (full disk, a kill at any moment, a crash's leftovers, a corrupt
file) asserts that the previous good state is intact and that the run can go on. README's "Bad input and faults"
sums up the categories; CATEGORY_COUNTS below counts them.
"""

import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

import data_processor
import exports
import inference
import trainer
from data_processor import load_metadata, write_synthetic_ml1m
from enhanced_model import fields_digest, read_checkpoint
from inference import (
    AlreadySeenError,
    CheckpointError,
    ColdItemError,
    InferenceError,
    MetadataError,
    MetadataMismatchError,
    RecommendationEngine,
    UnknownItemError,
    UnknownUserError,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def known_items(engine, user_id: int):
    """A known user's history as item indices (the engine's catalog)."""
    catalog = engine._catalog
    return catalog.history_items[catalog.history(catalog.user_index[user_id])]


def one_error_line(text: str) -> str:
    assert text.count("\n") == 1 and text.startswith("error: ") and "Traceback" not in text, text
    return text


def exit_status(main, argv: list[str]) -> int:
    """A CLI's exit status: what main returns, or the code of the SystemExit its argument parser raises."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


FORMULA_TITLES = ["=1+2 (1999)", "+SUM(A1) (1998)", "-3+4 (1997)", "@cmd (1996)"]


def with_formula_titles(data_dir: Path) -> Path:
    """Give four rated movies titles a spreadsheet would run as formulas (exports.py's CSV rule)."""
    rated = {line.split("::")[1] for line in (data_dir / "ratings.dat").read_text(encoding="latin-1").splitlines()}
    lines = (data_dir / "movies.dat").read_text(encoding="latin-1").splitlines()
    targets = [row for row, line in enumerate(lines) if line.split("::")[0] in rated][:len(FORMULA_TITLES)]
    for row, title in zip(targets, FORMULA_TITLES, strict=True):
        movie_id, _, genres = lines[row].split("::")
        lines[row] = f"{movie_id}::{title}::{genres}"
    (data_dir / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return data_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny finished training on synthetic data (four titles start like spreadsheet formulas): (data folder,
    checkpoint folder)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    data_dir = with_formula_titles(write_synthetic_ml1m(root / "ml-1m"))
    trainer.train(trainer.parse_args([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(root / "run"),
                                      "--max_epochs", "2"]))
    return data_dir, root / "run"


@pytest.fixture(scope="module")
def engine(run):
    return RecommendationEngine(run[1] / "best_model.pt", device="cpu")


# ----------------------------------------------------------------------------------------------------------
# trainer.py: refused before anything is read or written (exit status 2)

TRAINER_FLAGS = [
    (["--num_heads", "0"], "--num_heads must be positive"),
    (["--hidden_size", "30", "--num_heads", "4"], "--hidden_size must be divisible by --num_heads"),
    (["--num_layers", "0"], "--num_layers must be positive"),
    (["--seq_length", "1"], "--seq_length must be at least 2"),
    (["--seq_length", "100000"], "lower --seq_length or --batch_size"),
    (["--window_stride", "51"], "--window_stride must be in 1..--seq_length"),
    (["--window_stride", "0"], "--window_stride must be in 1..--seq_length"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--cosine_temperature", "-0.05"], "--cosine_temperature must be >= 0"),
    (["--mask_prob", "0"], "--mask_prob must be in (0, 1)"),
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--learning_rate=-1e-3"], "--learning_rate must be positive"),
    (["--patience", "0"], "--patience must be positive"),
    (["--eval_every", "0"], "--eval_every must be positive"),
    (["--max_minutes", "-5"], "--max_minutes must be positive"),
    (["--warmup_steps", "-1"], "--warmup_steps must be >= 0"),
    (["--lr_decay_fraction", "0"], "--lr_decay_fraction must be in (0, 1]"),
    (["--label_smoothing", "1"], "--label_smoothing must be in [0, 1)"),
    (["--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
    (["--label_smoothing", "0.1", "--item_loss", "sampled"], "--label_smoothing needs --item_loss full"),
    (["--next_item_weight", "0", "--item_prediction_weight", "0"], "at least one of"),
    (["--causal", "--next_item_weight", "0"], "--causal (the CPU default) needs --next_item_weight > 0"),
    (["--rating_prediction_weight", "-0.3"], "task weights must be >= 0"),
    (["--hidden_size", "abc"], "--hidden_size: invalid int value: 'abc'"),
    (["--positional", "rotary"], "--positional: invalid choice: 'rotary'"),
    (["--lr_schedule", "step"], "--lr_schedule: invalid choice: 'step'"),
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
    (["@no-such-config.txt"], "no-such-config.txt"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16"),
    (["--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("flags, message", TRAINER_FLAGS)
def test_trainer_refuses_bad_flags_before_anything_happens(tmp_path, capsys, flags, message):
    status = exit_status(trainer.main, ["--data_dir", str(tmp_path / "no-data-needed"), "--checkpoint_dir",
                                        str(tmp_path / "run"), *flags])
    assert status == 2 and message in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # nothing written, the data never read


def test_trainer_refuses_folders_it_cannot_write(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    for flag in ("--checkpoint_dir", "--metadata_path"):
        path = tmp_path / "taken" / ("run" if flag == "--checkpoint_dir" else "m.json")
        assert trainer.main(["--data_dir", str(tmp_path), flag, str(path)]) == 2
        assert f"{flag}: {tmp_path / 'taken'} is a file" in one_error_line(capsys.readouterr().err)
    assert files_under(tmp_path) == ["taken"]


def test_trainer_refuses_missing_data_and_checkpoints(run, tmp_path, capsys):
    data_dir, checkpoint_dir = run
    cases = [
        (["--data_dir", str(tmp_path / "missing"), *TINY], 1, "missing"),
        (["--resume", str(tmp_path / "nothing.pt")], 2, "nothing.pt"),
        (["--resume", str(checkpoint_dir / "last.pt"), "--hidden_size", "32"], 2,
         "--hidden_size 32 (the checkpoint's: 16)"),
    ]
    for flags, status, message in cases:
        assert trainer.main([*flags, "--checkpoint_dir", str(tmp_path / "out")]) == status
        assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out" / "last.pt").exists()


def test_trainer_refuses_a_corrupt_checkpoint_and_leaves_it_as_it_was(run, tmp_path, capsys):
    broken = tmp_path / "last.pt"
    broken.write_bytes((run[1] / "last.pt").read_bytes()[:5000])
    before = broken.read_bytes()
    status = trainer.main(["--resume", str(broken), "--data_dir", str(run[0])])
    assert status in (1, 2) and "cannot be read" in one_error_line(capsys.readouterr().err)
    assert broken.read_bytes() == before


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_a_new_run_never_replaces_a_finished_one(run, tmp_path, capsys):
    data_dir, finished = run
    folder = copy_run(finished, tmp_path / "first")
    before = snapshot(folder)
    status = trainer.main([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(folder), "--max_epochs", "1"])
    error = one_error_line(capsys.readouterr().err)
    assert status == 2 and f"--checkpoint_dir {folder} holds another run" in error
    assert "--resume" in error and "--overwrite" in error and "another --checkpoint_dir" in error
    assert snapshot(folder) == before
    # resuming another run into it is not a way around it
    other = tmp_path / "second"
    assert trainer.main([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(other), "--max_epochs", "1",
                         "--seed", "3"]) == 0
    capsys.readouterr()
    status = trainer.main(["--resume", str(other / "last.pt"), "--checkpoint_dir", str(folder), "--max_epochs", "2"])
    assert status == 2 and "holds another run" in one_error_line(capsys.readouterr().err)
    assert snapshot(folder) == before


def test_overwrite_moves_the_old_run_aside_and_deletes_nothing(run, tmp_path, capsys):
    data_dir, finished = run
    folder = copy_run(finished, tmp_path / "run")
    before = snapshot(folder)
    assert trainer.main([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(folder), "--max_epochs", "1",
                         "--seed", "7", "--overwrite"]) == 0
    (aside,) = folder.glob("replaced-*")
    assert snapshot(aside) == {name: data for name, data in before.items() if name != ".run.lock"}
    assert json.loads((folder / "results.json").read_text())["epochs_run"] == 1
    assert json.loads((folder / "results.json").read_text())["run_id"] != json.loads(before["results.json"])["run_id"]
    status = trainer.main(["--resume", str(folder / "last.pt"), "--overwrite", "--max_epochs", "2"])
    assert status == 2 and "--overwrite would move aside" in one_error_line(capsys.readouterr().err)


OUTPUT_OVER_INPUT = [  # (flags after the data and folder, the message); {data}/{run} are filled in
    (["--metadata_path", "{data}/ratings.dat"], "--metadata_path would write over"),
    (["--metadata_path", "{data}/users.dat"], "which --data_dir reads"),
    (["--metadata_path", "{out}/results.json"], "are the same file"),
    (["--metadata_path", "{out}/best_model.pt"], "are the same file"),
    (["--cache_dir", "{data}/movies.dat"], "--cache_dir: "),
    (["--checkpoint_dir", "{data}/ratings.dat"], "--checkpoint_dir: "),
]


@pytest.mark.parametrize("flags, message", OUTPUT_OVER_INPUT, ids=[case[0][1] for case in OUTPUT_OVER_INPUT])
def test_no_output_is_an_input(tmp_path, capsys, flags, message):
    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m")
    before = snapshot(data_dir)
    flags = [flag.format(data=data_dir, out=tmp_path / "out") for flag in flags]
    status = trainer.main([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(tmp_path / "out"), *flags])
    assert status == 2 and message in one_error_line(capsys.readouterr().err)
    assert snapshot(data_dir) == before and not (tmp_path / "out").exists()


def test_metadata_is_never_written_over_the_checkpoint_being_resumed(run, tmp_path, capsys):
    folder = copy_run(run[1], tmp_path / "run")
    before = snapshot(folder)
    status = trainer.main(["--resume", str(folder / "last.pt"), "--metadata_path", str(folder / "last.pt"),
                           "--max_epochs", "3"])
    assert status == 2 and "which --resume reads" in one_error_line(capsys.readouterr().err)
    assert snapshot(folder) == before


def test_resuming_into_a_new_folder_runs_to_its_results(run, tmp_path, capsys):
    data_dir, finished = run
    source = copy_run(finished, tmp_path / "source")
    before = snapshot(source)
    new = tmp_path / "new"
    assert trainer.main(["--resume", str(source / "last.pt"), "--checkpoint_dir", str(new), "--max_epochs", "3"]) == 0
    results = json.loads((new / "results.json").read_text())
    assert results["epochs_run"] == 3 and results["run_id"] == json.loads(before["results.json"])["run_id"]
    assert read_checkpoint(new / "best_model.pt")["run_id"] == results["run_id"]
    assert snapshot(source) == before  # the run it came from is untouched


def test_a_finished_run_resumed_has_nothing_to_do_unless_its_budget_grows(run, tmp_path, capsys):
    folder = copy_run(run[1], tmp_path / "run")
    before = snapshot(folder)
    assert trainer.main(["--resume", str(folder / "last.pt")]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "has trained all 2 epochs" in out
    assert snapshot(folder) == before
    assert trainer.main(["--resume", str(folder / "last.pt"), "--max_epochs", "3"]) == 0
    assert json.loads((folder / "results.json").read_text())["epochs_run"] == 3


def test_a_run_that_used_its_minutes_resumes_to_nothing_to_do(tmp_path, capsys):
    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m")
    folder = tmp_path / "run"
    assert trainer.main([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(folder), "--max_epochs", "50",
                         "--max_minutes", "0.001"]) == 0
    before = snapshot(folder)
    assert read_checkpoint(folder / "last.pt")["epoch"] < 50
    capsys.readouterr()
    assert trainer.main(["--resume", str(folder / "last.pt")]) == 0
    assert "used its 0.001 minutes" in capsys.readouterr().out
    assert snapshot(folder) == before


def interrupted(args: list[str], when: Callable[[], bool]) -> tuple[int, str]:
    """trainer.py in a process of its own, sent SIGINT (Ctrl-C) as soon as when() holds: (exit status, stderr)."""
    process = trainer_process(*args)
    started = time.monotonic()
    while not when() and time.monotonic() - started < 120:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    return process.returncode, error


def test_ctrl_c_at_any_moment_says_what_is_on_disk(tmp_path):
    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m", num_users=60)
    out = tmp_path / "run"
    args = [*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(out), "--max_epochs", "200",
            "--batch_size", "4"]
    started = time.monotonic()
    status, error = interrupted(args, lambda: time.monotonic() - started > 0.5)  # while it imports torch
    assert status == 130 and error.strip() in ("interrupted while starting: nothing was written",
                                               "interrupted: no epoch was completed, so "
                                               f"{out} holds no checkpoint of this run"), error
    status, error = interrupted(args, lambda: (out / "metadata.json").exists())  # before the first epoch ends
    assert status == 130 and "Traceback" not in error, error
    if not (out / "last.pt").exists():
        assert error.strip() == f"interrupted: no epoch was completed, so {out} holds no checkpoint of this run"
    shutil.rmtree(out)
    status, error = interrupted(args, lambda: (out / "last.pt").exists())  # while it trains
    epoch = read_checkpoint(out / "last.pt")["epoch"]
    assert status == 130 and error.strip() == (f"interrupted: {out / 'last.pt'} holds epoch {epoch}; continue with "
                                               f"--resume {out / 'last.pt'}"), error


# ----------------------------------------------------------------------------------------------------------
# data_processor.py


def test_data_processor_cli_refuses_bad_data_and_flags(tmp_path, capsys):
    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m")
    ratings = (data_dir / "ratings.dat").read_bytes().split(b"\n")
    ratings[3] = ratings[3].replace(b"::", b"::9::", 1)  # a fifth field on line 4
    (data_dir / "ratings.dat").write_bytes(b"\n".join(ratings))
    out = tmp_path / "out"
    cases = [
        ([str(data_dir)], 1, "ratings.dat, line 4"),
        ([str(tmp_path / "missing")], 1, "missing"),
    ]
    for data, status, message in cases:
        assert data_processor.main(["--data_dir", *data, "--output_dir", str(out)]) == status
        error = capsys.readouterr().err
        assert message in error.splitlines()[-1] and "Traceback" not in error
        assert not (out / "metadata.json").exists()
    assert exit_status(data_processor.main, ["--data_dir", str(data_dir), "--seq_length", "1", "--output_dir",
                                             str(out)]) == 2
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# inference.py


def test_inference_cli_refuses_bad_requests(run, tmp_path, capsys):
    checkpoint_dir = run[1]
    model = ["--model_path", str(checkpoint_dir / "best_model.pt")]
    (tmp_path / "text.pt").write_text("not a checkpoint")
    tampered = tmp_path / "metadata.json"
    tampered.write_bytes((checkpoint_dir / "metadata.json").read_bytes().replace(b'"num_users":40', b'"num_users":41'))
    cases = [
        ([*model, "--user_id", "999999"], 1, "unknown user_id 999999"),
        ([*model, "--user_id", "1", "--k", "0"], 1, "k must be positive"),
        ([*model, "--item_sequence", "1,x"], 2, "comma-separated positive integers"),
        ([*model, "--item_sequence", "-5"], 2, "comma-separated positive integers"),
        (["--model_path", str(tmp_path / "missing.pt"), "--user_id", "1"], 1, "does not exist"),
        (["--model_path", str(tmp_path / "text.pt"), "--user_id", "1"], 1, "cannot be read"),
        ([*model, "--metadata_path", str(tampered), "--user_id", "1"], 1, "content_sha256"),
        ([*model, "--all_users"], 2, "--all_users and --output go together"),
        ([*model, "--all_users", "--output", str(tmp_path / "recs.txt")], 1, "must end in .csv or .jsonl"),
        ([*model, "--item_sequence", "1,2", "--timestamps", "978300760"], 2,
         "--timestamps has 1 values for the 2 movies"),
        ([*model, "--user_id", "1", "--min_predicted_rating", "7"], 1, "min_predicted_rating must be a number"),
        ([*model, "--gender", "F", "--age", "0"], 1, "age must be 1..120"),
        ([*model, "--profile"], 2, "--profile needs --user_id"),
        ([*model, "--user_id", "1", "--k", "ten"], 2, "--k: invalid int value"),
    ]
    for flags, status, message in cases:
        assert exit_status(inference.main, flags) == status, flags
        captured = capsys.readouterr()
        assert message in one_error_line(captured.err) and captured.out == ""
    assert files_under(tmp_path) == ["metadata.json", "text.pt"]


def test_inference_refuses_metadata_of_other_data(run, tmp_path, capsys):
    other = write_synthetic_ml1m(tmp_path / "other", seed=5)
    data_processor.main(["--data_dir", str(other), "--output_dir", str(tmp_path / "meta")])
    capsys.readouterr()
    with pytest.raises(MetadataMismatchError):
        RecommendationEngine(run[1] / "best_model.pt", tmp_path / "meta" / "metadata.json", device="cpu")


# ----------------------------------------------------------------------------------------------------------
# The engine's API: the project's own errors, never a TypeError from deep inside

API_CASES = [
    ("user_id as text", lambda e: e.get_recommendations("1"), InferenceError, "user_id must be an integer"),
    ("filter_seen as text", lambda e: e.get_recommendations(1, filter_seen="yes"), InferenceError,
     "filter_seen must be True or False"),
    ("k as a boolean", lambda e: e.get_recommendations(1, k=True), InferenceError, "k must be an integer"),
    ("k as a float", lambda e: e.get_recommendations(1, k=2.5), InferenceError, "k must be an integer"),
    ("sequence as text", lambda e: e.get_recommendations(None, "1,2"), InferenceError, "must be a list of integers"),
    ("sequence of floats", lambda e: e.get_recommendations(None, [1.5]), InferenceError, "integers only"),
    ("unknown user", lambda e: e.get_recommendations(999999), UnknownUserError, "unknown user_id 999999"),
    ("empty batch", lambda e: e.recommend_batch([]), InferenceError, "user_ids is empty"),
    ("batch as a number", lambda e: e.recommend_batch(5), InferenceError, "user_ids must be a list"),
    ("batch rows disagree", lambda e: e.score_batch([1, 2], [[1]]), InferenceError, "item_sequences has 1 rows"),
    ("bad demographics row", lambda e: e.score_batch([None], [[]], demographics=["F"]), InferenceError,
     r"demographics\[0\]"),
    ("explain a seen movie", lambda e: e.explain_recommendation(
        1, None, e._catalog.item_movie_ids[known_items(e, 1)[0]]), AlreadySeenError,
     "already in this user"),
    ("explain an unknown movie", lambda e: e.explain_recommendation(1, None, 999999), UnknownItemError, "999999"),
    ("profile without a user", lambda e: e.get_user_profile(None), InferenceError, "user_id must be an integer"),
    ("rating threshold as text", lambda e: e.get_recommendations(1, min_predicted_rating="4"), InferenceError,
     "min_predicted_rating must be a number"),
    ("export progress as text", lambda e: e.export_recommendations("/tmp/x.csv", progress="no"), InferenceError,
     "progress must be True or False"),
    ("cold items for a warm movie", lambda e: e.get_cold_item_recommendations(
        None, [], movie_ids=[int(e._catalog.item_movie_ids[1])]), InferenceError, "have an embedding"),
]


@pytest.mark.parametrize("name, call, error, message", API_CASES, ids=[case[0] for case in API_CASES])
def test_api_refuses_bad_arguments(engine, name, call, error, message):
    with pytest.raises(error, match=message) as raised:
        call(engine)
    assert "\n" not in str(raised.value)


def test_engine_construction_refuses_bad_files(run, tmp_path):
    (tmp_path / "junk.pt").write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match="cannot be read"):
        RecommendationEngine(tmp_path / "junk.pt", run[1] / "metadata.json")
    with pytest.raises(MetadataError, match="does not exist"):
        RecommendationEngine(run[1] / "best_model.pt", tmp_path / "none.json")
    with pytest.raises(InferenceError, match="default_day_of_year must be in 1..366"):
        RecommendationEngine(run[1] / "best_model.pt", default_day_of_year=400)


# ----------------------------------------------------------------------------------------------------------
# Inference requests, combinations and exports: every public argument's type and range, what the CLI cannot
# combine, what it writes (never over an input), broken checkpoints, Ctrl-C


def warm(e: RecommendationEngine, index: int = 1) -> int:
    """The MovieID of the model's item `index`."""
    return int(e._catalog.item_movie_ids[index])


def cold(e: RecommendationEngine) -> int:
    """A never-rated MovieID."""
    catalog = e._catalog
    return int(catalog.movie_ids[catalog.item_of_movie[catalog.movie_ids] == 0][0])


def unseen(e: RecommendationEngine, user_id: int = 1) -> int:
    """A movie the model scores that is not in user_id's history."""
    seen = set(known_items(e, user_id))
    return warm(e, next(i for i in range(1, e.config.num_items + 1) if i not in seen))


def model_path(e: RecommendationEngine) -> Path:
    return e._inputs["model_path"]


API_ARGUMENT_CASES = [
    ("history as a set", lambda e: e.get_recommendations(None, {warm(e)}), InferenceError, "a set has no order"),
    ("history as a generator", lambda e: e.get_recommendations(None, (m for m in [warm(e)])), InferenceError,
     "read only once"),
    ("history as a dict", lambda e: e.get_recommendations(None, {warm(e): 5}), InferenceError, "a dict is not a list"),
    ("history as a 2-D array", lambda e: e.get_recommendations(None, np.array([[warm(e)]])), InferenceError, "1-D"),
    ("history of nested lists", lambda e: e.get_recommendations(None, [[warm(e)]]), InferenceError, "integers only"),
    ("history of booleans", lambda e: e.get_recommendations(None, [True]), InferenceError, "integers only"),
    ("history with an id of 2**70", lambda e: e.get_recommendations(None, [2**70]), UnknownItemError,
     "item_sequence must hold positive integers"),
    ("history with a negative id", lambda e: e.get_recommendations(None, [-5]), UnknownItemError,
     "item_sequence must hold positive integers"),
    ("history with a movie not in movies.dat", lambda e: e.get_recommendations(None, [10**9]), UnknownItemError,
     "not in movies.dat"),
    ("user_id of 2**70", lambda e: e.get_recommendations(2**70), UnknownUserError,
     "user_id must be a positive integer"),
    ("user_id 0", lambda e: e.get_recommendations(0), UnknownUserError, "user_id must be a positive integer"),
    ("negative user_id with demographics", lambda e: e.get_recommendations(-3, gender="F"), UnknownUserError,
     "user_id must be a positive integer"),
    ("user_id as bytes", lambda e: e.get_recommendations(b"1"), InferenceError, "user_id must be an integer"),
    ("timestamps past the year 9999", lambda e: e.get_recommendations(None, [warm(e)], timestamps=[2**62]),
     InferenceError, "timestamps must hold Unix seconds in 0..253402300799"),
    ("negative timestamps", lambda e: e.get_recommendations(None, [warm(e)], timestamps=[-1]), InferenceError,
     "timestamps must hold Unix seconds"),
    ("timestamps as a set", lambda e: e.get_recommendations(None, [warm(e)], timestamps={978300760}),
     InferenceError, "a set has no order"),
    ("recommended_item_id of 2**70", lambda e: e.explain_recommendation(1, None, 2**70), UnknownItemError,
     "recommended_item_id must be a positive integer"),
    ("recommended_item_id as a boolean", lambda e: e.explain_recommendation(1, None, True), InferenceError,
     "recommended_item_id must be an integer"),
    ("recommended_item_id as a list", lambda e: e.explain_recommendation(1, None, [warm(e)]), InferenceError,
     "recommended_item_id must be an integer"),
    ("explain a never-rated movie", lambda e: e.explain_recommendation(None, [warm(e)], cold(e)), ColdItemError,
     "never rated"),
    ("one dict as a batch's demographics", lambda e: e.score_batch([None], [[]], demographics={"gender": "F"}),
     InferenceError, r"demographics must be a list .* pass \[the dict\]"),
    ("a demographics row with another field", lambda e: e.recommend_batch([None], demographics=[{"sex": "F"}]),
     InferenceError, r"demographics\[0\] must be None or a dict of gender, age, occupation"),
    ("user_ids as a set", lambda e: e.recommend_batch({1, 2}), InferenceError, "user_ids .* a set has no order"),
    ("user_ids as a generator", lambda e: e.recommend_batch(u for u in [1]), InferenceError,
     "user_ids .* read only once"),
    ("user_ids as a dict", lambda e: e.recommend_batch({1: None}), InferenceError, "user_ids .* a dict is not a list"),
    ("item_sequences as a generator", lambda e: e.score_batch([1], (s for s in [[warm(e)]])), InferenceError,
     "item_sequences .* read only once"),
    ("batch timestamps as a generator", lambda e: e.score_batch([None], [[warm(e)]], timestamps=(
        t for t in [[978300760]])), InferenceError, "timestamps .* read only once"),
    ("batch_size as text", lambda e: e.recommend_batch([1], batch_size="8"), InferenceError,
     "batch_size must be an integer"),
    ("min_predicted_rating NaN", lambda e: e.get_recommendations(1, min_predicted_rating=math.nan), InferenceError,
     "min_predicted_rating must be a number in 1..5"),
    ("min_predicted_rating inf", lambda e: e.recommend_batch([1], min_predicted_rating=math.inf), InferenceError,
     "min_predicted_rating must be a number in 1..5"),
    ("min_predicted_rating 0.5", lambda e: e.get_recommendations(1, min_predicted_rating=0.5), InferenceError,
     "min_predicted_rating must be a number in 1..5"),
    ("k negative", lambda e: e.get_recommendations(1, k=-3), InferenceError, "k must be positive"),
    ("gender as a number", lambda e: e.get_recommendations(gender=1), InferenceError, "gender must be one of F, M"),
    ("gender as bytes", lambda e: e.get_recommendations(gender=b"F"), InferenceError, "gender must be one of F, M"),
    ("age 200", lambda e: e.get_recommendations(gender="F", age=200), InferenceError, "age must be 1..120"),
    ("an age group ML-1M lacks", lambda e: e.get_recommendations(age="99-100"), InferenceError,
     "age .* must be an integer"),
    ("occupation 99", lambda e: e.get_recommendations(occupation=99), InferenceError,
     "occupation must be an ML-1M code 0..20"),
    ("an occupation ML-1M lacks", lambda e: e.get_recommendations(occupation="astronaut"), InferenceError,
     "occupation .* must be an integer"),
    ("profile of 2**70", lambda e: e.get_user_profile(2**70), UnknownUserError, "user_id must be a positive integer"),
    ("cold items from an empty list", lambda e: e.get_cold_item_recommendations(None, [], movie_ids=[]),
     InferenceError, "movie_ids is empty"),
    ("cold items of a movie not in movies.dat", lambda e: e.get_cold_item_recommendations(movie_ids=[10**9]),
     UnknownItemError, "unknown MovieID"),
    ("cold items from a generator", lambda e: e.get_cold_item_recommendations(movie_ids=(m for m in [cold(e)])),
     InferenceError, "movie_ids .* read only once"),
    ("export path as bytes", lambda e: e.export_recommendations(b"recs.csv"), InferenceError,
     "path must be a path"),
    ("export of a new user", lambda e: e.export_recommendations("recs.csv", user_ids=[None]), InferenceError,
     "user_ids must be an integer"),
    ("export of unknown users", lambda e: e.export_recommendations("recs.csv", user_ids=[1, 999999]),
     UnknownUserError, r"unknown UserID\(s\) \[999999\]"),
    ("export threshold as text", lambda e: e.export_recommendations("recs.csv", min_predicted_rating="4"),
     InferenceError, "min_predicted_rating must be a number"),
    ("plot that is not a .png", lambda e: e.explain_recommendation(1, None, unseen(e), plot="why.jpg"),
     InferenceError, r"plot why.jpg must end in \.png"),
    ("plot as bytes", lambda e: e.explain_recommendation(1, None, unseen(e), plot=b"why.png"), InferenceError,
     "plot must be a path"),
    ("device as a number", lambda e: RecommendationEngine(model_path(e), device=0), InferenceError,
     "device must be a str"),
    ("model_path as bytes", lambda e: RecommendationEngine(bytes(model_path(e))), InferenceError,
     "model_path must be a path"),
    ("model_path as a number", lambda e: RecommendationEngine(5), InferenceError, "model_path must be a path"),
    ("model_path a folder", lambda e: RecommendationEngine(model_path(e).parent), CheckpointError,
     r"is a folder: pass the checkpoint file \(best_model.pt in it\?\)"),
    ("metadata_path a folder", lambda e: RecommendationEngine(model_path(e), model_path(e).parent), MetadataError,
     "is a folder"),
    ("default_day_of_year as a boolean", lambda e: RecommendationEngine(model_path(e), default_day_of_year=True),
     InferenceError, "default_day_of_year must be an integer"),
    ("prior window of 2**70", lambda e: setattr(e, "new_user_prior_window", (2**70, 1)), InferenceError,
     "new_user_prior_window must be two whole numbers"),
    ("prior weight NaN", lambda e: setattr(e, "new_user_prior_weight", math.nan), InferenceError,
     "new_user_prior_weight must be a finite number"),
    ("prior weight 1e300", lambda e: setattr(e, "new_user_prior_weight", 1e300), InferenceError,
     "new_user_prior_weight must be a finite number >= 0 and <= 1e"),
    ("prior fade as text", lambda e: setattr(e, "new_user_prior_fade", "3"), InferenceError,
     "new_user_prior_fade must be a number"),
]


@pytest.mark.parametrize("name, call, error, message", API_ARGUMENT_CASES, ids=[c[0] for c in API_ARGUMENT_CASES])
def test_api_refuses_each_argument_by_name(engine, name, call, error, message):
    settings = [getattr(engine, f"new_user_prior_{s}") for s in ("weight", "fade", "steepness", "window")]
    with pytest.raises(error, match=message) as raised:
        call(engine)
    assert "\n" not in str(raised.value)
    assert [getattr(engine, f"new_user_prior_{s}") for s in ("weight", "fade", "steepness", "window")] == settings


def test_api_accepts_numpy_values_and_clamps_k(engine):
    history = [warm(engine, 1), warm(engine, 2)]
    plain = engine.get_recommendations(1, history, k=3, filter_seen=True, min_predicted_rating=1.0)
    as_numpy = engine.get_recommendations(np.int64(1), np.array(history, dtype=np.int32), k=np.int64(3),
                                          filter_seen=np.bool_(True), min_predicted_rating=np.float32(1.0))
    assert as_numpy == plain and len(plain) == 3
    assert engine.get_recommendations(1, tuple(history), k=3) == engine.get_recommendations(1, history, k=3)
    everything = engine.config.num_items
    seen = {warm(engine, i) for i in known_items(engine, 1)}
    for k in (everything + 1, 10**9, 2**70):  # more than the catalogue: every unseen movie the model scores, once
        listed = engine.get_recommendations(1, k=k)
        assert len(listed) == everything - len(seen) and not seen & {r["movie_id"] for r in listed}
        assert len({r["movie_id"] for r in listed}) == len(listed)
    assert len(engine.get_recommendations(1, k=10**9, filter_seen=False)) == everything
    cold_ids = [cold(engine)]
    assert engine.get_cold_item_recommendations(movie_ids=set(cold_ids)) == engine.get_cold_item_recommendations(
        movie_ids=cold_ids)  # a set of candidates is fine: their order is not used


def test_prior_settings_accept_numpy_numbers(run):
    engine = RecommendationEngine(run[1] / "best_model.pt", device="cpu", new_user_prior_window=np.array([1, 3]))
    engine.new_user_prior_weight, engine.new_user_prior_fade = np.float32(2.5), np.int64(4)
    engine.new_user_prior_steepness, engine.new_user_prior_window = np.float64(2), (np.int64(0), np.int32(2))
    assert (engine.new_user_prior_weight, engine.new_user_prior_fade, engine.new_user_prior_steepness,
            engine.new_user_prior_window) == (2.5, 4.0, 2.0, (0, 2))
    assert all(type(value) is float for value in (engine.new_user_prior_weight, engine.new_user_prior_fade))


def test_a_history_with_duplicates_is_read_as_given(engine):
    first, second = warm(engine, 3), warm(engine, 4)
    listed = engine.get_recommendations(None, [first, second, first], k=5)
    assert len(listed) == 5 and not {first, second} & {r["movie_id"] for r in listed}
    explanation = engine.explain_recommendation(None, [first, second, first], listed[0]["movie_id"])
    assert [d["movie_id"] for d in sorted(explanation["drivers"], key=lambda d: -d["position"])] == [first, second,
                                                                                                     first]


# The command line: flags that cannot be honoured together, refused by name before the model is loaded (exit 2)

CLI_COMBINATIONS = [
    (["--all_users", "--output", "{tmp}/recs.csv", "--user_id", "1"], "--user_id cannot combine with it"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--item_sequence", "{warm}"], "--item_sequence cannot combine"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--timestamps", "978300760"], "--timestamps cannot combine"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--gender", "F"], "--gender cannot combine"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--age", "30"], "--age cannot combine"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--occupation", "7"], "--occupation cannot combine"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--explain"], "--explain cannot combine with it: the file holds"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--profile"], "--profile cannot combine"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--cold_items"], "--cold_items cannot combine"),
    (["--all_users", "--output", "{tmp}/recs.csv", "--json"], "--json cannot combine with it: the file's format"),
    (["--output", "{tmp}/recs.csv", "--user_id", "1"], "--all_users and --output go together"),
    (["--timestamps", "978300760"], "--timestamps gives the days of --item_sequence's movies"),
    (["--user_id", "1", "--cold_items", "--min_predicted_rating", "4"], "--min_predicted_rating cannot combine with "
     "--cold_items"),
    (["--item_sequence", "{warm}", "--profile"], "--profile needs --user_id"),
    (["--gender", "X"], "--gender: invalid choice: 'X'"),
]


@pytest.mark.parametrize("flags, message", CLI_COMBINATIONS, ids=[" ".join(c[0][:6]) for c in CLI_COMBINATIONS])
def test_inference_cli_refuses_flags_that_cannot_combine(run, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setattr(inference, "RecommendationEngine", None)  # refused before any model is loaded
    flags = [flag.format(tmp=tmp_path, warm=1) for flag in flags]
    status = exit_status(inference.main, ["--model_path", str(run[1] / "best_model.pt"), *flags])
    captured = capsys.readouterr()
    assert status == 2 and message in one_error_line(captured.err) and captured.out == ""
    assert list(tmp_path.iterdir()) == []


INFERENCE_REQUESTS = [  # (flags, exit status, message): values the engine refuses, or answers
    (["--gender", "F", "--age", "200"], 1, "age must be 1..120"),
    (["--gender", "F", "--occupation", "99"], 1, "occupation must be an ML-1M code 0..20"),
    (["--user_id", "1", "--k", "-3"], 1, "k must be positive"),
    (["--user_id", "-5"], 1, "user_id must be a positive integer"),
    (["--user_id", str(2**70)], 1, "user_id must be a positive integer"),
    (["--item_sequence", "{warm}", "--timestamps", "999999999999"], 1, "timestamps must hold Unix seconds"),
    (["--model_path", "{run}"], 1, "is a folder: pass the checkpoint file (best_model.pt in it?)"),
    (["--metadata_path", "{run}", "--user_id", "1"], 1, "is a folder"),
    (["--metadata_path", "{truncated}", "--user_id", "1"], 1, "cannot be read"),
    (["--new_user_prior_weight", "nan", "--gender", "F"], 1, "new_user_prior_weight must be a finite number"),
    (["--new_user_prior_window", "100", "1", "--gender", "F"], 1, "new_user_prior_window must be two whole numbers"),
    (["--user_id", "1", "--k", "100000"], 0, None),  # more than the catalogue: every unseen movie, once
    (["--item_sequence", "{warm},{warm2},{warm}", "--k", "3", "--explain"], 0, None),  # a repeat is read as given
]


def test_inference_cli_answers_or_refuses_requests(run, tmp_path, capsys):
    truncated = tmp_path / "metadata.json"
    truncated.write_bytes((run[1] / "metadata.json").read_bytes()[:3000])
    engine = RecommendationEngine(run[1] / "best_model.pt", device="cpu")
    values = {"run": run[1], "truncated": truncated, "warm": warm(engine, 3), "warm2": warm(engine, 4)}
    for flags, status, message in INFERENCE_REQUESTS:
        flags = ["--model_path", str(run[1] / "best_model.pt"), "--device", "cpu",
                 *(flag.format(**values) for flag in flags)]
        assert exit_status(inference.main, flags) == status, flags
        captured = capsys.readouterr()
        if message is None:
            assert captured.err == "" and captured.out.startswith("top ")
        else:
            assert message in one_error_line(captured.err) and captured.out == ""
    assert files_under(tmp_path) == ["metadata.json"]


# Exports: never over an input, never into a folder; CSV text that a spreadsheet would run gets an apostrophe


def test_export_paths_are_files_and_never_inputs(engine, run, tmp_path):
    model, metadata = run[1] / "best_model.pt", run[1] / "metadata.json"
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "model.csv").symlink_to(model)
    (tmp_path / "metadata.jsonl").symlink_to(metadata)
    (tmp_path / "why.png").symlink_to(model)
    (tmp_path / "file").write_text("a file, not a folder")
    before = snapshot(run[1])
    cases = [
        (lambda: engine.export_recommendations(tmp_path / "folder.csv"), "is a folder: name a file in it"),
        (lambda: engine.export_recommendations(tmp_path / "missing" / "recs.csv"), "does not exist"),
        (lambda: engine.export_recommendations(tmp_path / "file" / "recs.csv"), "does not exist"),
        (lambda: engine.export_recommendations(tmp_path / "model.csv"), re.escape(f"is model_path ({model})")),
        (lambda: engine.export_recommendations(tmp_path / "metadata.jsonl"),
         re.escape(f"is metadata_path ({metadata})")),
        (lambda: engine.explain_recommendation(1, None, unseen(engine), plot=tmp_path / "why.png"),
         "plot .* is model_path"),
        (lambda: engine.explain_recommendation(1, None, unseen(engine), plot=tmp_path / "folder.csv"), r"\.png"),
    ]
    for call, message in cases:
        with pytest.raises(InferenceError, match=message) as raised:
            call()
        assert "\n" not in str(raised.value)
    assert snapshot(run[1]) == before
    assert sorted(files_under(tmp_path)) == ["file", "folder.csv", "metadata.jsonl", "model.csv", "why.png"]
    (tmp_path / "old.csv").write_text("an older export\n")  # an existing file is replaced whole, atomically
    assert engine.export_recommendations(tmp_path / "old.csv", user_ids=[1, 2], k=2, progress=False) == 4
    assert (tmp_path / "old.csv").read_text().splitlines()[0] == ",".join(exports.EXPORT_COLUMNS)
    assert not list(tmp_path.glob(".*.part"))


def test_export_cells_that_look_like_formulas_get_an_apostrophe_in_csv_only(engine, tmp_path):
    import csv

    assert engine.export_recommendations(tmp_path / "all.csv", user_ids=[1], k=10**6, filter_seen=False,
                                         progress=False) == engine.config.num_items
    engine.export_recommendations(tmp_path / "all.jsonl", user_ids=[1], k=10**6, filter_seen=False, progress=False)
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as file:
        csv_titles = {int(row["movie_id"]): row["title"] for row in csv.DictReader(file)}
    lines = (tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()
    json_titles = {row["movie_id"]: row["title"] for row in map(json.loads, lines)}
    formulas = {movie_id: title for movie_id, title in json_titles.items() if title in FORMULA_TITLES}
    assert sorted(formulas.values()) == sorted(FORMULA_TITLES)  # JSON Lines holds the text as it is
    for movie_id, title in json_titles.items():
        assert csv_titles[movie_id] == ("'" + title if movie_id in formulas else title)
    assert [exports.spreadsheet_safe(cell) for cell in ("\tx", "\rx", "a=b", -3.5, "", None)] == [
        "'\tx", "'\rx", "a=b", -3.5, "", None]  # numbers (a negative score) stay numbers


def test_cli_export_honours_the_rating_threshold_and_refuses_paths_before_loading(engine, run, tmp_path, capsys):
    model = run[1] / "best_model.pt"
    ratings = sorted(r["predicted_rating"] for rows in engine.recommend_batch(engine.user_ids, k=5) for r in rows)
    threshold = round(ratings[len(ratings) // 2], 3)  # about half the top 5s pass
    out = tmp_path / "recs.jsonl"
    assert inference.main(["--model_path", str(model), "--device", "cpu", "--all_users", "--k", "5",
                           "--min_predicted_rating", str(threshold), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = engine.recommend_batch(engine.user_ids, k=5, min_predicted_rating=threshold)
    assert [(r["user_id"], r["movie_id"]) for r in rows] == [
        (user_id, record["movie_id"]) for user_id, records in zip(engine.user_ids, expected, strict=True)
        for record in records]
    assert rows and all(r["predicted_rating"] >= threshold for r in rows)
    assert capsys.readouterr().err == ""
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "model.csv").symlink_to(model)
    for output, message in ((tmp_path / "missing" / "r.csv", "does not exist"),
                            (tmp_path / "folder.csv", "is a folder"),
                            (tmp_path / "model.csv", f"is --model_path ({model})"),
                            (tmp_path / "recs.txt", "must end in .csv or .jsonl")):
        assert inference.main(["--model_path", str(model), "--all_users", "--output", str(output),
                               "--device", "nothing-is-loaded"]) == 1
        assert message in one_error_line(capsys.readouterr().err)
    assert sorted(files_under(tmp_path)) == ["folder.csv", "model.csv", "recs.jsonl"]


def test_ctrl_c_during_an_export_writes_nothing_and_leaves_the_old_file(run, tmp_path, capsys, monkeypatch):
    target = tmp_path / "recs.csv"
    target.write_text("the previous export\n")
    cells = []

    def interrupted_after_some_rows(cell):
        cells.append(cell)
        if len(cells) == 70:  # ten rows written to the temporary file
            raise KeyboardInterrupt
        return cell

    monkeypatch.setattr(exports, "spreadsheet_safe", interrupted_after_some_rows)
    status = inference.main(["--model_path", str(run[1] / "best_model.pt"), "--device", "cpu", "--all_users",
                             "--output", str(target)])
    assert status == 130 and capsys.readouterr().err == f"interrupted: nothing was written to {target}\n"
    assert files_under(tmp_path) == ["recs.csv"] and target.read_text() == "the previous export\n"


def test_ctrl_c_while_the_engine_loads_or_imports_is_one_line(run, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "RecommendationEngine", interrupted)
    assert inference.main(["--model_path", str(run[1] / "best_model.pt"), "--user_id", "1"]) == 130
    assert capsys.readouterr().err == "interrupted while loading the model: nothing was written\n"
    process = subprocess.Popen([sys.executable, str(REPO / "inference.py"), "--model_path",
                                str(run[1] / "best_model.pt"), "--all_users", "--output", str(tmp_path / "r.csv")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(0.5)  # while it imports torch (seconds), or loads the model
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130 and error in ("interrupted while starting: nothing was written\n",
                                                   "interrupted while loading the model: nothing was written\n",
                                                   f"interrupted: nothing was written to {tmp_path / 'r.csv'}\n"), error
    assert list(tmp_path.iterdir()) == []


# Broken checkpoints: NaN or inf weights, or finite weights whose scores overflow, are refused when loaded

BROKEN_WEIGHTS = [  # (state_dict entry, value put in it, all of it or one number, the message)
    ("item_embedding.weight", math.nan, False, "NaN or inf in its weight item_embedding.weight"),
    ("encoder.final_norm.bias", math.inf, False, "NaN or inf in its weight encoder.final_norm.bias"),
    # finite, but every normalised state above 1.13 in size overflows (3e38 * 1.13 > float32's 3.4e38)
    ("encoder.final_norm.weight", 3e38, True, "NaN or inf in its scores of a probe batch"),
]


@pytest.mark.parametrize("entry, value, everywhere, message", BROKEN_WEIGHTS, ids=[c[0] for c in BROKEN_WEIGHTS])
def test_a_checkpoint_with_non_finite_weights_or_scores_is_refused(run, tmp_path, capsys, entry, value, everywhere,
                                                                   message):
    checkpoint = torch.load(run[1] / "best_model.pt", weights_only=True)
    weights = checkpoint["model_state"][entry]
    weights.fill_(value) if everywhere else weights.view(-1).__setitem__(0, value)
    checkpoint["fields_sha256"] = fields_digest(checkpoint)  # as trainer.py signs it (the weights are not in it)
    broken = tmp_path / "best_model.pt"
    torch.save(checkpoint, broken)
    with pytest.raises(CheckpointError, match=f"checkpoint {broken} is broken: {message}"):
        RecommendationEngine(broken, run[1] / "metadata.json", device="cpu")
    assert inference.main(["--model_path", str(broken), "--metadata_path", str(run[1] / "metadata.json"),
                           "--user_id", "1"]) == 1
    captured = capsys.readouterr()
    assert message in one_error_line(captured.err) and captured.out == ""



# ----------------------------------------------------------------------------------------------------------
# Faults: a full disk, kills at any moment, a crash's leftovers


def trainer_process(*args: str, file_size_limit: int | None = None) -> subprocess.Popen:
    def limit() -> None:
        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(REPO / "trainer.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, preexec_fn=limit)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m")
    out = tmp_path / "run"
    first = trainer_process(*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(out), "--max_epochs", "1")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    good, best = (out / "last.pt").read_bytes(), (out / "best_model.pt").read_bytes()
    metadata_size = (out / "metadata.json").stat().st_size
    assert len(good) > metadata_size + 1000  # room for a limit between the two
    full = trainer_process("--resume", str(out / "last.pt"), "--max_epochs", "2",
                           file_size_limit=metadata_size + 1000)
    _, error = full.communicate(timeout=300)
    assert full.returncode == 1 and "Traceback" not in error, error
    line = error.strip().splitlines()[-1]
    assert line.startswith("error: could not write") and "is intact" in line and "--resume" in line
    assert (out / "last.pt").read_bytes() == good and read_checkpoint(out / "last.pt")["epoch"] == 1
    assert (out / "best_model.pt").read_bytes() == best
    assert not list(out.glob(".*.part")) and not (out / ".run.lock").exists()
    resumed = trainer_process("--resume", str(out / "last.pt"), "--max_epochs", "2")
    assert resumed.wait(timeout=300) == 0
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 2


def test_kills_at_random_moments_never_leave_a_corrupt_file(tmp_path):
    """Four SIGKILLs at seeded random moments of a run: the first while it starts (reading the data, writing the
    cache and metadata.json), the others while it trains, evaluates and writes checkpoints. After each, every file
    there is reads; the run then starts again or resumes, to its end."""

    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m", num_users=60)
    out = tmp_path / "run"
    rng = random.Random(20261129)
    args = [*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
            "--max_epochs", "6", "--batch_size", "4"]
    for kill in range(4):
        process = trainer_process(*(["--resume", str(out / "last.pt"), "--max_epochs", "6"]
                                    if (out / "last.pt").exists() else args))
        started = time.monotonic()
        while kill and not (out / "last.pt").exists() and time.monotonic() - started < 120:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.5, 4.0) if kill == 0 else rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        for name in ("last.pt", "best_model.pt"):
            if (out / name).exists():
                assert read_checkpoint(out / name)["epoch"] >= 1
        if (out / "metadata.json").exists():
            load_metadata(out / "metadata.json")
        for cached in (tmp_path / "cache").glob("*/cache.json"):
            assert "cache_key" in json.loads(cached.read_text())  # whole, or not there
    final = trainer_process("--resume", str(out / "last.pt"), "--max_epochs", "6")
    _, error = final.communicate(timeout=600)
    assert final.returncode == 0, error
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 6
    assert not list(out.glob(".*.part")) and not (out / ".run.lock").exists()


def test_a_crash_s_leftovers_are_cleaned_and_a_corrupt_cache_rebuilt(tmp_path):
    data_dir = write_synthetic_ml1m(tmp_path / "ml-1m")
    out, cache = tmp_path / "run", tmp_path / "cache"
    out.mkdir()
    (out / ".last.pt.5f3a.part").write_bytes(b"half a checkpoint")  # as a kill during torch.save leaves it
    (out / ".run.lock").write_text("999999999")  # the killed run's lock: its process is gone
    config = trainer.parse_args([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(out),
                                 "--cache_dir", str(cache), "--max_epochs", "1"])
    trainer.train(config)
    cached = next(cache.glob("*/window_items.npy"))
    cached.write_bytes(cached.read_bytes()[:100])  # a cache cut short
    _, results = trainer.train(trainer.parse_args([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir",
                                                   str(tmp_path / "run2"), "--cache_dir", str(cache),
                                                   "--max_epochs", "1"]))
    assert results["epochs_run"] == 1 and cached.stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_an_export_that_fails_part_way_leaves_no_file(engine, tmp_path):
    path = tmp_path / "recs.csv"
    with pytest.raises(InferenceError):
        engine.export_recommendations(path, user_ids=[1, 2, 999999], progress=False)
    assert list(tmp_path.iterdir()) == []


CATEGORY_COUNTS = {
    "trainer.py flags and folders": len(TRAINER_FLAGS) + 2 + 3 + 1,
    "runs never replaced, outputs never inputs, resume and Ctrl-C": 2 + 2 + len(OUTPUT_OVER_INPUT) + 1 + 1 + 2 + 1 + 3,
    "data_processor.py data and flags": 3,
    "inference.py requests and files": 14 + 1,
    "engine API arguments and files": len(API_CASES) + 3,
    # API arguments; numpy values and k beyond the catalogue (7), numpy prior settings (5), a repeated movie (2);
    # CLI combinations and requests; export paths (8), formula cells (2), the CLI export (5), Ctrl-C (1 + 2); broken
    # checkpoints
    "inference requests, combinations and exports": len(API_ARGUMENT_CASES) + 7 + 5 + 2 + len(CLI_COMBINATIONS)
    + len(INFERENCE_REQUESTS) + 8 + 2 + 5 + 1 + 2 + len(BROKEN_WEIGHTS),
    "faults (full disk, kills, leftovers, corrupt cache, failed export)": 4,  # the kill test kills four times
}


def test_the_matrix_has_at_least_110_cases():
    assert sum(CATEGORY_COUNTS.values()) >= 110


@pytest.mark.parametrize("program", ["trainer", "inference", "data_processor"])
def test_help_names_each_default_at_most_once(program, capsys):
    """Every flag's help says its default once (or not at all): none with a hand-written default and argparse's."""
    main = {"trainer": lambda argv: trainer.parse_args(argv), "inference": inference.main,
            "data_processor": data_processor.main}[program]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    entries = text.split(" --")[1:]  # one per option, after the usage line's
    assert len(entries) > 10
    for entry in entries:
        assert entry.count("(default") <= 1, entry
