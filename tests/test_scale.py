"""benchmarks/synthetic_movielens.py (ML-32M-format files of a chosen size, read by the real reader) and
benchmarks/scale.py (each stage's cost at several sizes)."""

import json

import numpy as np
import pytest

import readers
from benchmarks.scale import main as scale_main
from benchmarks.scale import parse_size, seconds_text, shape
from benchmarks.synthetic_movielens import MIN_EVENTS, main, write_synthetic_movielens

USERS, ITEMS, EVENTS = 100, 2000, 5000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_synthetic_movielens(tmp_path_factory.mktemp("synthetic"), USERS, ITEMS, EVENTS, seed=3)


def test_the_files_are_ml32m_csv_of_the_asked_size(folder):
    tables = readers.read_dataset(folder)
    assert tables.name == "ml-csv"
    assert (len(tables.interactions), len(tables.items), len(tables.users)) == (EVENTS, ITEMS, USERS)
    assert not tables.interactions.duplicated(["user_id", "item_id"]).any()  # a movie rated once per user
    per_user = tables.interactions.groupby("user_id").size()
    assert per_user.min() >= MIN_EVENTS and per_user.max() <= ITEMS // 2 and per_user.sum() == EVENTS
    ratings = tables.interactions["rating"].to_numpy()
    assert set(np.unique(ratings)) <= set(np.arange(1, 11) / 2)
    assert (folder / "ratings.csv").read_text().splitlines()[0] == "userId,movieId,rating,timestamp"
    assert '"Movie 1, a synthetic title (' in (folder / "movies.csv").read_text()  # a quoted title, as in ML-32M


def test_popularity_is_a_long_tail_and_time_runs_forward(folder):
    interactions = readers.read_dataset(folder).interactions
    counts = np.sort(interactions.groupby("item_id").size().to_numpy())[::-1]
    # p(rank r) ~ 1 / (r + 10): the top 10% of 2,000 movies hold ln(210/10) / ln(2010/10) = 57% of the mass
    assert counts[: ITEMS // 10].sum() / EVENTS > 0.45
    assert counts[-1] <= 3  # and the tail is thin
    for _, user in interactions.groupby("user_id"):
        assert np.all(np.diff(user["timestamp"].to_numpy()) >= 0)


def test_the_same_seed_gives_the_same_bytes(folder, tmp_path):
    again = write_synthetic_movielens(tmp_path / "again", USERS, ITEMS, EVENTS, seed=3)
    other = write_synthetic_movielens(tmp_path / "other", USERS, ITEMS, EVENTS, seed=4)
    for name in ("ratings.csv", "movies.csv"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    assert (other / "ratings.csv").read_bytes() != (folder / "ratings.csv").read_bytes()


def test_impossible_sizes_are_refused_in_one_line(tmp_path, capsys):
    assert main(["--users", "100", "--items", "2000", "--events", "1000", "--out", str(tmp_path / "a")]) == 2
    assert "--events 1,000 must be 20..1,000 (half of --items) per user for --users 100" in capsys.readouterr().err
    assert main(["--users", "10", "--items", "100", "--events", "5000", "--out", str(tmp_path / "b")]) == 2
    assert "--events 5,000 must be 20..50 (half of --items) per user" in capsys.readouterr().err
    assert not (tmp_path / "a" / "ratings.csv").exists() and not (tmp_path / "b" / "ratings.csv").exists()


def test_scale_writes_a_table_of_each_stage_at_each_size(tmp_path):
    assert (parse_size("5M"), parse_size("250K"), parse_size("1200")) == (5_000_000, 250_000, 1200)
    assert shape(32_000_204, None) == (200_948, 87_585)  # ML-32M's own shape
    stages = ["write", "read", "process", "reload", "metadata"]
    assert scale_main(["--sizes", "1K", "2K", "--items", "400", "--work", str(tmp_path), "--stages", *stages]) == 0
    rows = (tmp_path / "scale.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[:4] for row in rows] == [
        *(["| 1,000", "6", "400", stage] for stage in stages), *(["| 2,000", "13", "400", stage] for stage in stages)]
    assert all(float(row.split(" | ")[4]) > 0 for row in rows)  # a stage under 0.01 s keeps two digits, not 0.00
    assert [seconds_text(s) for s in (101.944, 1.0, 0.34, 0.01796, 0.00314)] == ["101.94", "1.00", "0.34", "0.018",
                                                                                "0.0031"]
    assert (tmp_path / "events_2000_items_400" / "cache" / "metadata.json").is_file()
    assert len(list((tmp_path / "events_2000_items_400" / "cache").glob("*/cache.json"))) == 1  # the processed arrays


def test_scale_times_training_evaluation_and_the_export_and_adds_to_its_records(tmp_path):
    common = ["--sizes", "2K", "--work", str(tmp_path), "--models", "cpu", "--num_negatives", "50", "--steps", "1"]
    assert scale_main([*common, "--items", "500", "--stages", "write", "train"]) == 0
    assert scale_main([*common, "--items", "400", "--stages", "write", "train", "evaluate", "export"]) == 0
    records = json.loads((tmp_path / "scale.json").read_text())
    records = sorted((r for r in records if r["stage"] != "write"), key=lambda r: (r["items"], r["stage"]))
    assert [(r["items"], r["stage"], r["model"]) for r in records] == [
        (400, "evaluate", ""), (400, "export", ""), (400, "train", "cpu"), (500, "train", "cpu")]
    assert all(r["seconds"] > 0 and r["peak_mb"] > 100 for r in records)
    exported = (tmp_path / "events_2000_items_400" / "model" / "top10.csv").read_text().splitlines()
    assert exported[0].startswith("user_id,rank,movie_id") and len(exported) == 1 + 13 * 10  # every user's top 10
    assert "13 users x" in records[0]["note"]
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"
    assert scale_main([*common, "--items", "500", "--stages", "train"]) == 0  # the same point again: replaced
    assert len(json.loads((tmp_path / "scale.json").read_text())) == 6  # with the two writes
    assert scale_main([*common, "--items", "500", "--stages", "train", "--item_loss", "full"]) == 0  # beside it
    trains = {r["model"]: r for r in json.loads((tmp_path / "scale.json").read_text())
              if r["stage"] == "train" and r["items"] == 500}
    assert sorted(trains) == ["cpu", "cpu_full"]
    assert "sampled loss, cpu:" in trains["cpu"]["note"] and "full softmax, cpu:" in trains["cpu_full"]["note"]
    assert trains["cpu_full"]["step_gflop"] > trains["cpu"]["step_gflop"]  # 500 items' logits against 50 negatives
    assert trains["cpu_full"]["gpu_peak_mb"] == 0 and trains["cpu_full"]["device"] == "cpu"
