"""Every reader's data trains and serves: the same synthetic ratings written in each published format (MovieLens
100K, 10M, 20M-and-later CSV) and as an interactions-only log in the generic format, each trained by trainer.py
(tiny model, one epoch) and served with titles by inference.py; the parts a dataset cannot feed are switched off
with a note, new users are described by the dataset's own features, and explanations name its feature values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY

import inference
import readers
from benchmarks.own_data import WRITERS, write_ml100k
from data_model import RawTables
from train_config import parse_args
from trainer import train

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
