"""Every reader's data trains and serves: the same synthetic ratings written in each published format (MovieLens
100K, 10M, 20M-and-later CSV) and as an interactions-only log in the generic format, each trained by trainer.py
(tiny model, one epoch) and served with titles by inference.py; the parts a dataset cannot feed are switched off
with a note, new users are described by the dataset's own features, and explanations name its feature values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

import inference
import readers
from data_model import RawTables
from train_config import parse_args
from trainer import train


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode(encoding))
    return path


def events(tables: RawTables) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) of every interaction, in file order."""
    columns = tables.interactions[["user_id", "item_id", "rating", "timestamp"]]
    return list(columns.itertuples(index=False, name=None))


def year_of(tables: RawTables, row: int) -> str:
    year = tables.items["year"].iloc[row]
    return "" if pd.isna(year) else str(int(year))


def write_ml100k(tables: RawTables, folder: Path) -> Path:
    """u.item (id|title|release date|video date|URL|19 genre flags), u.user (id|age|gender|occupation|zip), u.data
    (tab-separated), latin-1, as GroupLens writes them."""
    items = tables.items
    u_item = []
    for row, (item_id, title, genres) in enumerate(zip(items["item_id"], items["title"], items["genres"],
                                                       strict=True)):
        flags = ["1" if genre in genres.split("|") else "0" for genre in readers.ML100K_GENRES]
        year = year_of(tables, row)
        date = f"01-Jan-{year}" if year else ""
        u_item.append("|".join([str(item_id), title.replace("|", "/"), date, "", "http://example.org/x", *flags]))
    write_lines(folder / "u.item", u_item, "latin-1")
    users = tables.users
    u_user = [f"{u}|{age}|{gender}|job{'abcdefghijklmnopqrstu'[occupation]}|00000"
              for u, age, gender, occupation in zip(users["user_id"], users["age"], users["gender"],
                                                    users["occupation"], strict=True)]
    write_lines(folder / "u.user", u_user, "latin-1")
    write_lines(folder / "u.data", [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in events(tables)])
    return folder


def write_ml10m(tables: RawTables, folder: Path) -> Path:
    """movies.dat (MovieID::Title::Genres), ratings.dat (half stars written as 4.5), tags.dat; no users file."""
    items = tables.items
    write_lines(folder / "movies.dat", [f"{i}::{title}::{genres or '(no genres listed)'}" for i, title, genres
                                        in zip(items["item_id"], items["title"], items["genres"], strict=True)])
    write_lines(folder / "ratings.dat", [f"{u}::{i}::{r - 0.5 if r > 3 else r}::{t}"
                                         for u, i, r, t in events(tables)])
    write_lines(folder / "tags.dat", ["1::1::fun::1000000000"])
    return folder


def write_ml_csv(tables: RawTables, folder: Path) -> Path:
    """movies.csv with quoted titles, ratings.csv with '4.0'-style ratings, both with their headers."""
    items = tables.items
    quoted = ['"' + title.replace('"', '""') + '"' if "," in title or '"' in title else title
              for title in items["title"]]
    write_lines(folder / "movies.csv", ["movieId,title,genres", *(
        f"{i},{title},{genres or '(no genres listed)'}"
        for i, title, genres in zip(items["item_id"], quoted, items["genres"], strict=True))])
    write_lines(folder / "ratings.csv", ["userId,movieId,rating,timestamp", *(
        f"{u},{i},{float(r)},{t}" for u, i, r, t in events(tables))])
    return folder


def write_log(tables: RawTables, folder: Path) -> Path:
    """The generic format at its barest: interactions.csv alone, no ratings, no item or user table."""
    write_lines(folder / "interactions.csv", ["user_id,item_id,timestamp", *(
        f"{u},{i},{t}" for u, i, _, t in events(tables))])
    return folder


WRITERS = {"ml-100k": write_ml100k, "ml-10m": write_ml10m, "ml-csv": write_ml_csv, "generic": write_log}
# what each format's data lacks, and so the note the trainer prints
NOTES = {
    "ml-100k": [],
    "ml-10m": ["the users have no features"],
    "ml-csv": ["the users have no features"],
    "generic": ["the items have no features", "the users have no features", "the interactions carry no ratings",
                "no item feature is multi-valued"],
}


@pytest.fixture(scope="module")
def source_tables(tmp_path_factory) -> RawTables:
    from data_processor import write_synthetic_ml1m

    return readers.read_dataset(write_synthetic_ml1m(tmp_path_factory.mktemp("ml-1m"), num_users=40, num_movies=60))


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_trains_and_serves_with_titles(fmt, source_tables, tmp_path, capsys):
    folder = WRITERS[fmt](source_tables, tmp_path / fmt)
    assert readers.detect_format({child.name for child in folder.iterdir()}) == fmt
    out = tmp_path / "run"
    model, results = train(parse_args([*TINY, "--data_dir", str(folder), "--checkpoint_dir", str(out),
                                       "--max_epochs", "1"]))
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("note: ")]
    assert [note for note in NOTES[fmt] if not any(note in line for line in notes)] == []
    assert len(notes) == len(NOTES[fmt])
    assert 0.0 <= results["test"]["NDCG@10"] <= 1.0
    metadata = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    titles = {int(item_id): movie["title"] for item_id, movie in metadata["movies"].items()}
    user_id = int(source_tables.interactions["user_id"].iloc[0])
    assert inference.main(["--model_path", str(out / "best_model.pt"), "--metadata_path", str(out / "metadata.json"),
                           "--user_id", str(user_id), "--k", "3", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["recommendations"]
    assert len(records) == 3
    for record in records:
        expected = str(record["movie_id"]) if fmt == "generic" else titles[record["movie_id"]]
        assert record["title"] == expected
    if fmt == "generic":  # no features: ids are the titles, and nothing but the log reached the model
        assert not (model.config.use_item_side_info or model.config.use_user_tokens)
        assert model.rating_head is None and model.preference_head is None
        assert titles == {int(i): str(i) for i in np.unique(source_tables.interactions["item_id"])}


def test_a_new_user_is_described_by_the_datasets_own_features(source_tables, tmp_path, capsys):
    """ML-100K's users have an exact age (bucketed), a gender and an occupation name: a new user passes them by
    name (--user_feature), and each changes the answer; an unknown name or value is refused by name."""
    folder = write_ml100k(source_tables, tmp_path / "ml-100k")
    out = tmp_path / "run"
    train(parse_args([*TINY, "--data_dir", str(folder), "--checkpoint_dir", str(out), "--max_epochs", "1"]))
    engine = inference.RecommendationEngine(out / "best_model.pt", out / "metadata.json", new_user_prior_weight=0)
    alone = engine.get_recommendations(k=1000)
    assert {r["strategy"] for r in alone} == {"popularity"}
    described = engine.get_recommendations(k=1000, user_features={"age": 33, "gender": "F", "occupation": "jobc"})
    assert {r["strategy"] for r in described} == {"demographics"}
    older = engine.get_recommendations(k=1000, user_features={"age": 60, "gender": "F", "occupation": "jobc"})
    assert [r["score"] for r in older] != [r["score"] for r in described]
    same_bucket = engine.get_recommendations(k=1000, user_features={"age": 34, "gender": "F", "occupation": "jobc"})
    assert [r["score"] for r in same_bucket] == [r["score"] for r in described]  # 25-34: one bucket
    with pytest.raises(inference.InferenceError, match="'shoe_size' is not a user feature of this dataset; its user "
                                                       "features: age, gender, occupation"):
        engine.get_recommendations(user_features={"shoe_size": 44})
    with pytest.raises(inference.InferenceError, match="occupation must be one of"):
        engine.get_recommendations(user_features={"occupation": "astronaut"})
    with pytest.raises(inference.InferenceError, match="age must be a number"):
        engine.get_recommendations(user_features={"age": "old"})
    capsys.readouterr()
    assert inference.main(["--model_path", str(out / "best_model.pt"), "--metadata_path", str(out / "metadata.json"),
                           "--user_feature", "age=33", "--user_feature", "gender=F", "--user_feature",
                           "occupation=jobc", "--k", "5", "--json", "--new_user_prior_weight", "0"]) == 0
    records = json.loads(capsys.readouterr().out)["recommendations"]
    assert [r["movie_id"] for r in records] == [r["movie_id"] for r in described[:5]]


def test_explanations_and_profiles_name_the_datasets_features(source_tables, tmp_path):
    """On ML-100K the user tokens are its own features and the shared values are its genres."""
    folder = write_ml100k(source_tables, tmp_path / "ml-100k")
    out = tmp_path / "run"
    train(parse_args([*TINY, "--data_dir", str(folder), "--checkpoint_dir", str(out), "--max_epochs", "1"]))
    engine = inference.RecommendationEngine(out / "best_model.pt", out / "metadata.json")
    user_id = int(source_tables.users["user_id"].iloc[0])
    top = engine.get_recommendations(user_id, k=1)[0]
    explanation = engine.explain_recommendation(user_id, None, top["movie_id"])
    assert set(explanation["user_tokens"]) == {"identity", "age", "gender", "occupation"}
    assert set(explanation["shared_genres"]) <= set(readers.ML100K_GENRES)
    profile = engine.get_user_profile(user_id)
    user = source_tables.users.set_index("user_id").loc[user_id]
    assert (profile["age"], profile["gender"]) == (int(user["age"]), user["gender"])
    assert profile["occupation"] == f"job{'abcdefghijklmnopqrstu'[user['occupation']]}"
    assert {g["genre"] for g in profile["top_genres"]} <= set(readers.ML100K_GENRES)


def test_ml1m_through_the_generic_format_trains_to_the_same_figures(tmp_path):
    """The generic path is exact: ML-1M-format files exported to the generic format train, with the same seed and
    --deterministic, to the same validation history and test figures as the native reader."""
    from data_processor import write_synthetic_ml1m

    native = write_synthetic_ml1m(tmp_path / "ml-1m", num_users=40, num_movies=60)
    generic = readers.export_generic(readers.read_dataset(native), tmp_path / "generic")
    results = []
    for name, folder in (("native", native), ("generic", generic)):
        _, result = train(parse_args([*TINY, "--data_dir", str(folder), "--checkpoint_dir", str(tmp_path / name),
                                      "--max_epochs", "2", "--deterministic", "--seed", "3"]))
        results.append(result)
    assert results[0]["test"] == results[1]["test"]
    assert results[0]["validation"] == results[1]["validation"]
    assert results[0]["best_epoch"] == results[1]["best_epoch"] and results[0]["steps"] == results[1]["steps"]
