"""inference.py against a small model trained once in this module, plus real-ML-1M equivalence checks.

The training data is synthetic ML-1M with a learnable order: every user watches a run of consecutive movies
of a fixed cycle, so the next movie follows from the newest one. The trained model has real item-to-item
dependencies to explain, and its test metrics are far from trivial.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.bench_inference import near_ties, recommend_batch_parts, top10_agreement, write_untrained_checkpoint
from data_processor import (
    GENDERS,
    GENRES,
    OCCUPATIONS,
    day_of_year,
    eval_inputs,
    load_dataset,
    save_metadata,
    write_synthetic_ml1m,
)
from enhanced_model import EnhancedBERT4Rec, ModelConfig, user_token_names
from explanations import explanation_sentence
from inference import (
    NEW_USER_PRIOR_WINDOW,
    SIGNUP_POSITIONS,
    AlreadySeenError,
    CheckpointError,
    ColdItemError,
    ColdItemWarning,
    InferenceError,
    MetadataError,
    MetadataMismatchError,
    RecommendationEngine,
    UnknownItemError,
    UnknownUserError,
    faded_weight,
    main,
    signup_counts,
    signup_prior,
)
from trainer import (
    TrainConfig,
    data_to_tensors,
    evaluate,
    load_checkpoint,
    parse_args,
    ranking_metrics,
    target_ranks,
    to_eval_tensors,
    train,
    training_events,
)

REPO = Path(__file__).resolve().parents[1]
SEQ_LENGTH = 12
DAY = 100  # the engine's default day of year in these tests
pytestmark = pytest.mark.filterwarnings("ignore::data_processor.SourceChecksumWarning")


def write_ordered_ml1m(folder: Path, num_users: int = 120, seed: int = 0) -> Path:
    """Synthetic ML-1M whose ratings follow a cycle over 90 of the 100 movies (10 are never rated)."""
    write_synthetic_ml1m(folder, num_users=num_users, num_movies=100, seed=seed)
    lines = (folder / "movies.dat").read_text(encoding="latin-1").splitlines()
    cycle = np.array(sorted(int(line.split("::")[0]) for line in lines)[:90])
    rng = np.random.default_rng(seed)
    ratings = []
    for user_id in range(1, num_users + 1):
        count, start = int(rng.integers(15, 40)), int(rng.integers(len(cycle)))
        timestamps = 978300000 + np.cumsum(rng.integers(3600, 5 * 86400, count))
        ratings += [
            f"{user_id}::{cycle[(start + j) % len(cycle)]}::{rng.integers(1, 6)}::{timestamps[j]}\n"
            for j in range(count)
        ]
    (folder / "ratings.dat").write_text("".join(ratings), encoding="latin-1")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model trained for a few epochs, its data, an engine, and the model loaded independently."""
    out = tmp_path_factory.mktemp("inference")
    data_dir = write_ordered_ml1m(out / "ml-1m")
    config = parse_args([
        "--hidden_size", "32", "--num_heads", "2", "--num_layers", "1", "--seq_length", str(SEQ_LENGTH),
        "--batch_size", "32", "--learning_rate", "1e-2", "--warmup_steps", "5", "--dropout", "0.1",
        "--max_epochs", "15", "--no-progress", "--data_dir", str(data_dir), "--cache_dir", str(out / "cache"),
        "--checkpoint_dir", str(out / "checkpoints"), "--metadata_path", str(out / "metadata.json"),
    ])  # fmt: skip
    _, results = train(config)
    checkpoint_path = out / "checkpoints" / "best_model.pt"
    model = load_model(checkpoint_path)
    engine = RecommendationEngine(checkpoint_path, out / "metadata.json", device="cpu", default_day_of_year=DAY)
    return SimpleNamespace(
        out=out, data_dir=data_dir, checkpoint=checkpoint_path, metadata=out / "metadata.json", results=results,
        data=load_dataset(data_dir, seq_length=SEQ_LENGTH, verify=False), model=model, engine=engine,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Independent references: built from SequenceData and the bare model, never from the engine


def load_model(path: Path) -> EnhancedBERT4Rec:
    """The checkpoint's model, loaded without the engine."""
    checkpoint = load_checkpoint(path)
    model = EnhancedBERT4Rec(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def history(data, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(MovieIDs, item indices, days) of a user index's whole timeline."""
    start, stop = data.seq_offsets[user], data.seq_offsets[user + 1]
    items = data.seq_items[start:stop]
    return data.item_ids[items], items, data.seq_days[start:stop]


def token_inputs(tokens) -> dict[str, torch.Tensor]:
    """The model's user inputs of one row: (identity, gender, age, occupation) indices by name."""
    names = ("user_idx", "gender", "age", "occupation")
    return {name: torch.tensor([value]) for name, value in zip(names, tokens, strict=True)}


def reference_scores(model, items, days, user=(0, 0, 0, 0), mask_day=DAY) -> torch.Tensor:
    """Item-head scores (vocabulary,) of one hand-built input: newest T - 1 items left-padded, then MASK."""
    width = model.config.seq_length - 1
    items, days = list(items)[-width:], list(days)[-width:]
    padding = [0] * (width - len(items))
    item_seq = torch.tensor([padding + items + [model.config.mask_index]])
    day_seq = torch.tensor([padding + days + [days[-1] if days else mask_day]])
    with torch.no_grad():
        hidden = model(item_seq, day_seq, **token_inputs(user)).hidden
        return model.item_logits(hidden[:, -1])[0]


def reference_signup_log_prior(data, n: int, gender: int = 0, age: int = 0,
                               window: tuple[int, int] = NEW_USER_PRIOR_WINDOW) -> torch.Tensor:
    """log of the sign-up prior (vocabulary,) for a new user with n ratings, counted user by user: the training
    ratings (all but each user's last two) at positions n - before .. n + after - 1 (below 40), half from users of
    the gender and age group (0 = any), half from everyone; plus the 1e-6 floor."""
    before, after = window
    group, overall = np.zeros(data.num_items + 2), np.zeros(data.num_items + 2)
    for user in range(1, data.num_users + 1):
        items = history(data, user)[1][:-2]
        for position in range(max(n - before, 0), min(n + after, 40, len(items))):
            overall[items[position]] += 1
            if gender in (0, data.user_values["gender"][user]) and age in (0, data.user_values["age"][user]):
                group[items[position]] += 1
    prior = 0.5 * group / group.sum() + 0.5 * overall / overall.sum() if group.sum() else overall / overall.sum()
    return torch.from_numpy(np.log(prior + 1e-6))


def model_and_prior(logits: torch.Tensor, prior: torch.Tensor, engine, n: int) -> torch.Tensor:
    """A new user's expected score: the model's log-probabilities + w(n) * log prior, w(n) = weight / (1 + (n / f) ** p)
    for fade f and steepness p (p = 1: weight * f / (f + n))."""
    fade, steepness = engine.new_user_prior_fade, engine.new_user_prior_steepness
    weight = engine.new_user_prior_weight * (1.0 if math.isinf(fade) else 1.0 / (1.0 + (n / fade) ** steepness))
    return logits.log_softmax(dim=-1) + weight * prior.float()


def user_tokens(data, user: int) -> tuple[int, int, int, int]:
    return user, *(int(data.user_values[name][user]) for name in ("gender", "age", "occupation"))


def as_scores(records) -> dict[int, float]:
    return {record["movie_id"]: record["score"] for record in records}


def cold_movie_ids(data) -> list[int]:
    return sorted(set(data.catalog_ids.tolist()) - set(data.item_ids[1:-1].tolist()))


# ----------------------------------------------------------------------------------------------------------
# The trainer's test metrics, reproduced


def test_batch_scores_reproduce_the_trainers_test_metrics(trained):
    data, engine = trained.data, trained.engine
    user_ids = data.user_ids[1:].tolist()
    sequences = [history(data, user)[0][:-1].tolist() for user in range(1, data.num_users + 1)]  # train + val
    batch = engine.score_batch(user_ids, sequences)
    targets = [history(data, user)[0][-1] for user in range(1, data.num_users + 1)]
    columns = torch.from_numpy(np.searchsorted(batch.movie_ids, targets))
    assert np.array_equal(batch.movie_ids[columns.numpy()], targets)
    metrics = ranking_metrics(target_ranks(batch.scores, columns))
    expected = {name: value for name, value in trained.results["test"].items() if name in metrics}
    assert metrics == expected  # exactly: the same scores, the same ranks
    assert expected["HR@10"] > 0.5  # the model learned the order, so the ranks are far from trivial
    assert set(batch.strategies) == {"personalized"}


def test_single_user_scores_match_an_independent_forward_pass(trained):
    data, engine, model = trained.data, trained.engine, trained.model
    movie_ids, items, days = history(data, 5)
    records = engine.get_recommendations(user_id=int(data.user_ids[5]), k=1000, filter_seen=False)
    expected = reference_scores(model, items.tolist(), days.tolist(), user_tokens(data, 5))
    assert len(records) == data.num_items
    scores = as_scores(records)
    for item in range(1, data.num_items + 1):
        assert scores[int(data.item_ids[item])] == pytest.approx(expected[item].item(), abs=1e-5)
    assert [r["rank"] for r in records] == list(range(1, data.num_items + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(records, records[1:], strict=False))


def test_records_carry_movie_metadata_and_filter_the_known_history(trained):
    data, engine = trained.data, trained.engine
    user_id = int(data.user_ids[7])
    records = engine.get_recommendations(user_id=user_id, k=10)
    assert len(records) == 10 and [r["rank"] for r in records] == list(range(1, 11))
    assert {r["strategy"] for r in records} == {"personalized"}
    assert not {r["movie_id"] for r in records} & set(history(data, 7)[0].tolist())
    row = np.searchsorted(data.catalog_ids, records[0]["movie_id"])
    first = records[0]
    assert first["title"] == data.catalog_titles[row]
    assert first["genres"] == [GENRES[g] for g in np.flatnonzero(data.catalog_values["genres"][row])]
    expected_year = None if data.catalog_values["year"][row] == 1 else data.catalog_numbers["year"][row]
    assert first["year"] == expected_year
    assert set(first) == {"rank", "movie_id", "title", "genres", "year", "score", "strategy", "predicted_rating"}


def test_ad_hoc_sequence_uses_timestamps_and_filters_only_itself(trained):
    data, engine, model = trained.data, trained.engine, trained.model
    sequence = data.item_ids[[3, 4, 5]].tolist()
    timestamps = [978307200, 978393600, 1009843200]  # 2001-01-01, 2001-01-02, 2002-01-01 (UTC)
    records = engine.get_recommendations(user_id=int(data.user_ids[2]), item_sequence=sequence, k=1000,
                                         timestamps=timestamps)
    assert day_of_year(np.array(timestamps)).tolist() == [1, 2, 1]
    expected = reference_scores(model, [3, 4, 5], [1, 2, 1], user_tokens(data, 2))
    assert len(records) == data.num_items - 3 and not {r["movie_id"] for r in records} & set(sequence)
    scores = as_scores(records)
    assert scores[int(data.item_ids[6])] == pytest.approx(expected[6].item(), abs=1e-5)


def test_days_without_timestamps_come_from_the_users_ratings_else_the_default(trained):
    data, engine, model = trained.data, trained.engine, trained.model
    movie_ids, items, days = history(data, 4)
    foreign = next(i for i in range(1, data.num_items + 1) if i not in set(items.tolist()))
    sequence = [*movie_ids[:3].tolist(), int(data.item_ids[foreign])]
    records = engine.get_recommendations(user_id=int(data.user_ids[4]), item_sequence=sequence, k=1000,
                                         filter_seen=False)
    expected = reference_scores(model, [*items[:3], foreign], [*days[:3], DAY], user_tokens(data, 4))
    assert as_scores(records)[int(data.item_ids[1])] == pytest.approx(expected[1].item(), abs=1e-5)


def test_long_sequences_keep_the_newest_items_but_filter_all(trained):
    data, engine = trained.data, trained.engine
    movie_ids, _, _ = history(data, 9)
    assert len(movie_ids) > 2 * SEQ_LENGTH
    user_id = int(data.user_ids[9])
    full = engine.get_recommendations(user_id=user_id, item_sequence=movie_ids.tolist(), k=1000, filter_seen=False)
    newest = engine.get_recommendations(user_id=user_id, item_sequence=movie_ids[-(SEQ_LENGTH - 1):].tolist(),
                                        k=1000, filter_seen=False)
    assert as_scores(full) == pytest.approx(as_scores(newest))
    filtered = engine.get_recommendations(user_id=user_id, item_sequence=movie_ids.tolist(), k=1000)
    assert len(filtered) == data.num_items - len(set(movie_ids.tolist()))


def test_recommend_batch_equals_single_calls(trained):
    data, engine = trained.data, trained.engine
    user_ids = data.user_ids[[1, 8, 30]].tolist()
    batch = engine.recommend_batch(user_ids, k=5)
    for user_id, records in zip(user_ids, batch, strict=True):
        single = engine.get_recommendations(user_id=user_id, k=5)
        assert [r["movie_id"] for r in records] == [r["movie_id"] for r in single]
        assert [r["score"] for r in records] == pytest.approx([r["score"] for r in single], abs=1e-5)
    sequences = [[int(data.item_ids[1])], None, [int(data.item_ids[2])]]
    scores = engine.score_batch(user_ids, sequences, filter_seen=False, batch_size=2)
    assert scores.scores.shape == (3, data.num_items)
    single = engine.get_recommendations(user_id=user_ids[1], k=1000, filter_seen=False)
    column = {movie_id: j for j, movie_id in enumerate(scores.movie_ids.tolist())}
    for movie_id, score in as_scores(single).items():
        assert scores.scores[1, column[movie_id]].item() == pytest.approx(score, abs=1e-5)


def test_batch_scoring_takes_the_devices_batch_size_unless_given_one(trained, tmp_path, monkeypatch):
    """score_batch, recommend_batch and export_recommendations score engine.CPU_BATCH_USERS users a forward pass on a
    CPU (64: small batches reuse the memory the one before freed) unless given batch_size, with the same rankings."""
    import engine as engine_module

    sizes = []
    real = engine_module.score_and_hidden
    monkeypatch.setattr(engine_module, "score_and_hidden",
                        lambda *args, **kwargs: (sizes.append(args[4]), real(*args, **kwargs))[1])
    engine, user_ids = trained.engine, trained.engine.user_ids
    assert engine_module.CPU_BATCH_USERS == 64 and len(user_ids) > 64  # more than one batch
    default = engine.recommend_batch(user_ids, k=5)
    engine.score_batch(user_ids[:3])
    rows = engine.export_recommendations(tmp_path / "top.csv", k=5, progress=False)
    assert sizes == [64, 64] + [64] * math.ceil(len(user_ids) / 64) and rows == 5 * len(user_ids)
    whole = engine.recommend_batch(user_ids, k=5, batch_size=512)
    assert sizes[-1] == 512
    assert [[r["movie_id"] for r in top] for top in default] == [[r["movie_id"] for r in top] for top in whole]


def test_recommend_batch_gives_every_listing_its_own_record(trained):
    """A movie listed for several users comes as a separate dict with its own genres list each time (top_k_records
    makes each movie's record once per call and copies it): changing one listing changes no other, nor the catalog."""
    listings = {}
    for records in trained.engine.recommend_batch(trained.engine.user_ids[:30], k=10):
        for record in records:
            listings.setdefault(record["movie_id"], []).append(record)
    first, second = next(found for found in listings.values() if len(found) > 1)[:2]
    title, genres = second["title"], list(second["genres"])
    first["title"], first["score"] = "changed", -1.0
    first["genres"].append("changed")
    assert second["title"] == title != "changed" and second["score"] != -1.0 and second["genres"] == genres
    again = trained.engine.recommend_batch(trained.engine.user_ids[:30], k=10)
    assert all("changed" not in record["genres"] for records in again for record in records)  # nor the catalog's


def test_recommend_batch_excludes_each_sequences_own_movies(trained):
    """With explicit item_sequences, filter_seen excludes each row's own sequence (not a known user's stored history,
    nor another row's); filter_seen=False lists them like any movie."""
    data, engine = trained.data, trained.engine
    everything = data.num_items
    user_ids = [None, int(data.user_ids[3]), None]
    sequences = [data.item_ids[[10, 11, 12]].tolist(), data.item_ids[[40, 41]].tolist(),
                 data.item_ids[[5, 5, 70]].tolist()]
    demographics = [{"gender": "F"}, None, None]
    kept = engine.recommend_batch(user_ids, sequences, k=everything, demographics=demographics)
    full = engine.recommend_batch(user_ids, sequences, k=everything, demographics=demographics, filter_seen=False)
    for sequence, filtered, unfiltered in zip(sequences, kept, full, strict=True):
        listed = [r["movie_id"] for r in filtered]
        assert not set(sequence) & set(listed) and len(listed) == len(set(listed)) == everything - len(set(sequence))
        assert len(unfiltered) == everything and set(sequence) <= {r["movie_id"] for r in unfiltered}
    stored = set(history(data, 3)[0].tolist()) - set(sequences[1])
    assert stored <= {r["movie_id"] for r in kept[1]}  # the known user's other movies stay: the sequence replaces it
    scores = engine.score_batch(user_ids, sequences, demographics=demographics)
    for row, sequence in enumerate(sequences):
        columns = np.searchsorted(scores.movie_ids, sequence)
        assert torch.isneginf(scores.scores[row, columns]).all()
        assert int(torch.isneginf(scores.scores[row]).sum()) == len(set(sequence))


def test_batch_rows_follow_each_users_strategy(trained):
    data, engine = trained.data, trained.engine
    assert engine.user_ids == data.user_ids[1:].tolist()
    batch = engine.score_batch([None, int(data.user_ids[2]), None], [None, None, data.item_ids[[5]].tolist()])
    assert batch.strategies == ["popularity", "personalized", "sequence"]
    _, items, _ = training_events(data)
    counts = np.bincount(items, minlength=data.num_items + 1)[1:]
    assert batch.scores[0].tolist() == counts.tolist()
    single = engine.get_recommendations(item_sequence=data.item_ids[[5]].tolist(), k=1)[0]
    column = int(np.searchsorted(batch.movie_ids, single["movie_id"]))
    assert batch.scores[2, column].item() == pytest.approx(single["score"], abs=1e-5)
    assert batch.scores[2].argmax().item() == column


# ----------------------------------------------------------------------------------------------------------
# Cold start


def test_new_user_with_demographics_uses_the_demographic_tokens(trained):
    data, engine, model = trained.data, trained.engine, trained.model
    records = engine.get_recommendations(gender="F", age=30, occupation=7, k=1000)
    assert {r["strategy"] for r in records} == {"demographics"}
    # F = index 1, age 30 = group "25-34" = index 3, occupation code 7 = index 8 (data_processor.OCCUPATIONS);
    # a new user's score adds the sign-up prior of their gender and age group, at n = 0
    gender = GENDERS.index("F") + 1
    expected = model_and_prior(reference_scores(model, [], [], (0, gender, 3, 7 + 1)),
                               reference_signup_log_prior(data, 0, gender, 3), engine, 0)
    assert engine.new_user_prior_weight > 0
    for movie_id, score in as_scores(records).items():
        item = int(np.searchsorted(data.item_ids[1:-1], movie_id)) + 1
        assert score == pytest.approx(expected[item].item(), abs=1e-4)
    same_group = engine.get_recommendations(gender="f", age="25-34", occupation=OCCUPATIONS[7], k=1000)
    assert as_scores(same_group) == as_scores(records)
    unknown_id = engine.get_recommendations(user_id=999_999, gender="F", age=25, occupation=7, k=1000)
    assert as_scores(unknown_id) == as_scores(records)


def test_new_user_with_only_a_sequence_uses_the_model(trained):
    data, engine, model = trained.data, trained.engine, trained.model
    records = engine.get_recommendations(item_sequence=data.item_ids[[10, 11]].tolist(), k=3)
    assert {r["strategy"] for r in records} == {"sequence"}
    expected = model_and_prior(reference_scores(model, [10, 11], [DAY, DAY]), reference_signup_log_prior(data, 2),
                               engine, 2)  # no demographics: everyone's sign-up prior, n = 2
    expected[[10, 11]] = -torch.inf  # the sequence is excluded
    assert records[0]["movie_id"] == data.item_ids[int(expected.argmax())]
    assert records[0]["score"] == pytest.approx(expected.max().item(), abs=1e-4)


def test_new_user_prior_weight_zero_is_the_model_alone_and_known_users_never_get_the_prior(trained):
    data, model = trained.data, trained.model
    alone = RecommendationEngine(trained.checkpoint, trained.metadata, device="cpu", default_day_of_year=DAY,
                                 new_user_prior_weight=0)
    expected = reference_scores(model, [10, 11, 12], [DAY] * 3, (0, 2, 5, 0))
    records = alone.get_recommendations(item_sequence=data.item_ids[[10, 11, 12]].tolist(), gender="M",
                                        age=45, k=1000)
    for movie_id, score in as_scores(records).items():
        assert score == pytest.approx(expected[int(np.searchsorted(data.item_ids[1:-1], movie_id)) + 1].item(),
                                      abs=1e-5)
    # an overwhelming prior: the list then follows it (n = 3, men aged 45-49: gender 2, age group 5)
    alone.new_user_prior_weight = 1e6
    strong = alone.get_recommendations(item_sequence=data.item_ids[[10, 11, 12]].tolist(), gender="M",
                                       age=45, k=5)
    prior = reference_signup_log_prior(data, 3, 2, 5)
    prior[[0, -1, 10, 11, 12]] = -torch.inf
    columns = np.searchsorted(data.item_ids[1:-1], [r["movie_id"] for r in strong]) + 1
    assert prior[columns].tolist() == prior.topk(5).values.tolist()  # the prior's best five (ties in any order)
    def assert_faded_scores() -> None:  # a man (any age) with 3 ratings: the engine's scores at its current settings
        listed = alone.get_recommendations(item_sequence=data.item_ids[[10, 11, 12]].tolist(), gender="M",
                                           k=1000)
        expected = model_and_prior(reference_scores(model, [10, 11, 12], [DAY] * 3, (0, 2, 0, 0)),
                                   reference_signup_log_prior(data, 3, 2, 0), alone, 3)
        for movie_id, score in as_scores(listed).items():
            column = int(np.searchsorted(data.item_ids[1:-1], movie_id)) + 1
            assert score == pytest.approx(expected[column].item(), abs=1e-5)

    # the weight fades with the history: 2 x 3 / (3 + 3) = 1 at n = 3 (gender only: men, any age)
    alone.new_user_prior_weight, alone.new_user_prior_fade = 2.0, 3.0
    assert_faded_scores()
    # steeper: with fade 2 and steepness 3 the weight at n = 3 is 2 / (1 + 1.5 ** 3) = 0.457 (0.8 at steepness 1)
    alone.new_user_prior_fade, alone.new_user_prior_steepness = 2.0, 3.0
    assert_faded_scores()
    for steepness in (0, -1, math.nan, math.inf, "2", True):
        with pytest.raises(InferenceError, match="new_user_prior_steepness must be a finite number > 0"):
            alone.new_user_prior_steepness = steepness
    alone.new_user_prior_steepness = 1.0
    user_id = int(data.user_ids[4])
    assert as_scores(alone.get_recommendations(user_id=user_id, k=20)) == as_scores(
        trained.engine.get_recommendations(user_id=user_id, k=20))
    for weight in (-1, math.nan, math.inf, "1", True):
        with pytest.raises(InferenceError, match="new_user_prior_weight must be a finite number >= 0"):
            alone.new_user_prior_weight = weight
    for fade in (0, -1, math.nan, "3", False):
        with pytest.raises(InferenceError, match="new_user_prior_fade must be a number > 0"):
            alone.new_user_prior_fade = fade
    # the window: (0, 1) counts position n alone, (1, 3) positions n - 1 .. n + 1
    alone.new_user_prior_weight, alone.new_user_prior_fade = 1e6, math.inf
    for window in ((0, 1), (1, 3)):
        alone.new_user_prior_window = window
        scores = alone.score_batch([None], [data.item_ids[[10, 11, 12]].tolist()], demographics=[{"gender": "M"}],
                                   filter_seen=False).scores[0].double() / 1e6
        assert scores.numpy() == pytest.approx(reference_signup_log_prior(data, 3, 2, 0, window)[1:-1].numpy(),
                                               abs=1e-4)
    assert alone.new_user_prior_window == (1, 3)
    for window in ((-1, 3), (0, 0), (1.5, 3), (1,), "2,10", (True, 3)):
        with pytest.raises(InferenceError, match="new_user_prior_window must be two whole numbers"):
            alone.new_user_prior_window = window
    with pytest.raises(InferenceError, match="new_user_prior_weight"):
        RecommendationEngine(trained.checkpoint, trained.metadata, device="cpu", new_user_prior_weight=-0.5)


def test_faded_weight_halves_at_the_fade_and_the_steepness_sharpens_it():
    n = np.array([0, 1, 3, 6])
    assert faded_weight(16.0, 3.0, n).tolist() == pytest.approx([16.0, 12.0, 8.0, 16 / 3])  # 16 x 3 / (3 + n)
    assert faded_weight(16.0, 3.0, n, 4.0).tolist() == pytest.approx([16.0, 16 / (1 + 1 / 81), 8.0, 16 / 17])
    assert faded_weight(16.0, math.inf, n, 4.0).tolist() == [16.0] * 4


def test_signup_counts_by_hand():
    # users 1 and 2 (row 0 is no user); user 1: items 3, 4, 5, 6, 7 (the last two are validation and test)
    offsets = np.array([0, 0, 5, 9])
    items = np.array([3, 4, 5, 6, 7, 4, 4, 8, 9])
    features = np.array([[0, 0, 0], [1, 2, 0], [2, 2, 0]])
    counts = signup_counts(offsets, items, features, (3, 4, 10))
    assert counts.shape == (SIGNUP_POSITIONS + 1, 3, 4, 10) and counts[0].sum() == 0
    window = counts[2] - counts[0]  # positions 0 and 1 of each training part
    assert window[0, 0].tolist() == [0, 0, 0, 1, 3, 0, 0, 0, 0, 0]  # items 3, 4 (user 1) and 4, 4 (user 2)
    assert window[1, 2].tolist() == window[1, 0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert window[2, 2, 4] == 2 and window[0, 2].tolist() == window[0, 0].tolist()
    assert (counts[-1, 0, 0] - counts[3, 0, 0]).sum() == 0  # no training rating at position 3 or later
    assert counts[-1, 0, 0].sum() == 5 and counts[-1, 0, 0, [6, 7, 8, 9]].sum() == 0
    # half the group's share and half everyone's; everyone's alone when the group rated nothing; flat when no one did
    prior = signup_prior(np.array([[0.0, 2, 2], [0, 0, 0], [0, 0, 0]]), np.array([[2.0, 0, 6], [1, 1, 2], [0, 0, 0]]))
    expected = np.array([[0.125, 0.25, 0.625], [0.25, 0.25, 0.5], [0, 0, 0]]) + 1e-6
    assert np.allclose(prior, expected, rtol=0, atol=1e-12)


def test_nothing_known_falls_back_to_training_popularity(trained):
    data, engine = trained.data, trained.engine
    _, items, _ = training_events(data)
    counts = np.bincount(items, minlength=data.num_items + 2)
    records = engine.get_recommendations(k=5)
    assert {r["strategy"] for r in records} == {"popularity"}
    assert [r["score"] for r in records] == sorted(counts, reverse=True)[:5]
    for record in records:
        item = int(np.searchsorted(data.item_ids[1:-1], record["movie_id"])) + 1
        assert counts[item] == record["score"]
    explanation = engine.explain_recommendation(None, None, records[0]["movie_id"])
    assert explanation["strategy"] == "popularity" and explanation["recommended"]["rank"] == 1
    assert f"{int(records[0]['score'])} ratings in the training data" in explanation["sentence"]


def test_cold_items_in_a_sequence_are_skipped_with_a_warning(trained):
    data, engine = trained.data, trained.engine
    cold = cold_movie_ids(data)
    warm = data.item_ids[[20, 21]].tolist()
    with pytest.warns(ColdItemWarning, match=str(cold[0])):
        with_cold = engine.get_recommendations(user_id=int(data.user_ids[3]), item_sequence=[warm[0], cold[0], warm[1]],
                                               k=1000, timestamps=[978307200, 978310000, 978393600])
    without = engine.get_recommendations(user_id=int(data.user_ids[3]), item_sequence=warm, k=1000,
                                         timestamps=[978307200, 978393600])
    assert as_scores(with_cold) == pytest.approx(as_scores(without))
    with pytest.raises(ColdItemError, match="never rated"):
        engine.explain_recommendation(None, warm, cold[0])


def test_cold_item_recommendations_by_genre_and_year(trained):
    data, engine = trained.data, trained.engine
    cold = cold_movie_ids(data)
    sequence = [int(data.item_ids[30]), cold[1]]
    records = engine.get_cold_item_recommendations(item_sequence=sequence, k=100)
    assert {r["movie_id"] for r in records} == set(cold) - {cold[1]}
    assert {r["strategy"] for r in records} == {"genre_similarity"}
    # hand-computed: history profile = mean genre multi-hot; year term against the median known year
    rows = np.searchsorted(data.catalog_ids, sequence)
    profile = data.catalog_values["genres"][rows].mean(axis=0)
    years = [data.feature("item", "year")["range"][0] + y - 2 for y in data.catalog_values["year"][rows] if y != 1]
    for record in records:
        row = np.searchsorted(data.catalog_ids, record["movie_id"])
        genres = data.catalog_values["genres"][row]
        cosine = genres @ profile / (np.linalg.norm(genres) * np.linalg.norm(profile))
        year = None if data.catalog_values["year"][row] == 1 else data.catalog_numbers["year"][row]
        proximity = 0.0 if year is None or not years else np.exp(-abs(year - np.median(years)) / 10)
        assert record["score"] == pytest.approx(0.8 * cosine + 0.2 * proximity, abs=1e-6)
        assert record["matched_genres"] == [GENRES[g] for g in np.flatnonzero(genres * profile)]
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)


# ----------------------------------------------------------------------------------------------------------
# Explanations


def test_explanation_is_faithful_to_independently_recomputed_scores(trained):
    data, engine, model = trained.data, trained.engine, trained.model
    user = 11
    movie_ids, items, days = history(data, user)
    recommended = engine.get_recommendations(user_id=int(data.user_ids[user]), k=1)[0]
    calls = []
    handle = engine.model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    try:
        explanation = engine.explain_recommendation(int(data.user_ids[user]), None, recommended["movie_id"])
    finally:
        handle.remove()
    window = SEQ_LENGTH - 1
    # one forward pass scores the history, every deletion and every hidden user token; one more gives attention
    assert calls == [(1 + window + 4, SEQ_LENGTH), (1, SEQ_LENGTH)]
    drivers = explanation["drivers"]
    assert len(drivers) == window
    assert {d["movie_id"] for d in drivers} == set(movie_ids[-window:].tolist())
    assert [d["score_drop"] for d in drivers] == sorted((d["score_drop"] for d in drivers), reverse=True)

    item = int(np.searchsorted(data.item_ids[1:-1], recommended["movie_id"])) + 1
    tokens = user_tokens(data, user)
    base = reference_scores(model, items.tolist(), days.tolist(), tokens)[item].item()

    def drop_without(movie_id: int) -> float:
        keep = movie_ids != movie_id
        return base - reference_scores(model, items[keep].tolist(), days[keep].tolist(), tokens)[item].item()

    top, bottom = drop_without(drivers[0]["movie_id"]), drop_without(drivers[-1]["movie_id"])
    assert top > bottom + 0.1
    for driver in drivers:  # every driver's drop, recomputed on its own
        assert drop_without(driver["movie_id"]) == pytest.approx(driver["score_drop"], abs=1e-4)

    def rank(scores: torch.Tensor) -> int:  # 1 + unseen movies scoring higher (the whole history is seen)
        scores = scores.clone()
        scores[items] = -torch.inf
        return 1 + int((scores > scores[item]).sum())

    keep = movie_ids != drivers[0]["movie_id"]
    assert drivers[0]["rank_without"] == rank(reference_scores(model, items[keep].tolist(), days[keep].tolist(),
                                                               tokens))
    for j, name in enumerate(user_token_names(model.config)):  # each user token hidden (unknown), recomputed alone
        hidden = tuple(0 if i == j else value for i, value in enumerate(tokens))
        scores = reference_scores(model, items.tolist(), days.tolist(), hidden)
        assert explanation["user_tokens"][name]["score_drop"] == pytest.approx(base - scores[item].item(), abs=1e-4)
        assert explanation["user_tokens"][name]["rank_without"] == rank(scores)
    assert explanation["recommended"]["score"] == pytest.approx(base, abs=1e-5)
    assert explanation["recommended"]["rank"] == 1


def test_explanation_parts_and_sentence(trained):
    data, engine = trained.data, trained.engine
    user = 11
    recommended = engine.get_recommendations(user_id=int(data.user_ids[user]), k=1)[0]
    explanation = engine.explain_recommendation(int(data.user_ids[user]), None, recommended["movie_id"])
    assert set(explanation["user_tokens"]) == {"identity", "gender", "age", "occupation"}
    weights = [token["cross_attention"] for token in explanation["user_tokens"].values()]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and all(0 <= w <= 1 for w in weights)
    attention = [d["attention"] for d in explanation["drivers"]]
    assert all(0 <= a <= 1 for a in attention) and sum(attention) <= 1 + 1e-6
    window_movies = history(data, user)[0][-(SEQ_LENGTH - 1):]
    rows = np.searchsorted(data.catalog_ids, window_movies)
    genre_counts = data.catalog_values["genres"][rows].sum(axis=0)
    expected_genres = {g: int(genre_counts[GENRES.index(g)]) for g in recommended["genres"]
                       if genre_counts[GENRES.index(g)] > 0}
    assert explanation["shared_genres"] == expected_genres
    year = explanation["release_year"]
    known_years = [y for y in data.catalog_numbers["year"][rows] if not np.isnan(y)]
    assert year["history_median_year"] == pytest.approx(float(np.median(known_years)))
    if recommended["year"] is not None:
        assert year["difference"] == pytest.approx(recommended["year"] - np.median(known_years))
    sentence = explanation["sentence"]
    assert sentence.startswith(f'We recommend "{recommended["title"]}"') and sentence.endswith(".")
    assert f'"{explanation["drivers"][0]["title"]}"' in sentence
    assert "\n" not in sentence and set(explanation["measures"]) >= {"score_drop", "attention", "cross_attention"}


def test_sentence_from_hand_made_numbers():
    explanation = {
        "recommended": {"title": "Heat (1995)"},
        "drivers": [{"title": "Ronin (1998)", "score_drop": 0.04}, {"title": "Fargo (1996)", "score_drop": -0.2}],
        "shared_genres": {"Thriller": 3, "Crime": 2},
        "release_year": {"year": 1995, "history_median_year": 1990.0, "difference": 5.0, "relation": "newer"},
        # the most attended token (age) is not the one whose hiding costs most (identity): the sentence follows
        # the measured drop and shows attention only beside it
        "user_tokens": {"identity": {"cross_attention": 0.2, "score_drop": 0.3},
                        "age": {"cross_attention": 0.5, "score_drop": 0.1},
                        "gender": {"cross_attention": 0.3, "score_drop": -0.2}},
    }
    assert explanation_sentence(explanation, 5) == (
        'We recommend "Heat (1995)" from your 5 most recent movies as a whole (deleting any one of them lowers '
        "its score by less than 0.05); it is Thriller, like 3 of your 5 recent movies; it is 5 years newer than "
        "the median release year of your recent movies (1990); of what we know about you, your own taste "
        "profile weighed most (hiding it lowers the score by 0.30; attention to it: 20%)."
    )
    explanation["recommended"]["rank"] = 299
    assert explanation_sentence(explanation, 5, k=10).startswith(
        '"Heat (1995)" is ranked 299th for you, from your 5 most')
    assert explanation_sentence(explanation, 5, k=300).startswith('We recommend "Heat (1995)" from')
    explanation["recommended"]["rank"] = 1
    for tokens in ({}, {"age": {"cross_attention": 0.9, "score_drop": 0.01}}):  # nothing that matters to name
        explanation["user_tokens"] = tokens
        assert "weighed most" not in explanation_sentence(explanation, 5)
    explanation["drivers"] = [{"title": "Ronin (1998)", "score_drop": 1.0},
                              {"title": "Fargo (1996)", "score_drop": 0.6}]
    explanation["release_year"] = {"year": 1995, "history_median_year": 1994.0, "difference": 1.0,
                                   "relation": "same era"}
    assert explanation_sentence(explanation, 5).startswith(
        'We recommend "Heat (1995)" mostly because you watched "Ronin (1998)" and "Fargo (1996)" (without each, '
        "its score drops by 1.00 and 0.60); it is Thriller, like 3 of your 5 recent movies; it is from 1995, the "
        "era you watch most (median 1994)."
    )


def test_a_new_users_explanation_measures_the_model_with_the_sign_up_prior_held_fixed(trained):
    """A new user's score is the model's log-probability plus w(n) x log prior(n, gender, age). Deleting a history
    movie changes n, so measured on that sum every movie would seem to matter about equally (the prior's change);
    held fixed, each drop is the model's own log-probability difference, recomputed here without the engine."""
    data, engine, model = trained.data, trained.engine, trained.model
    items = [20, 21, 22, 23, 24]
    sequence = data.item_ids[items].tolist()
    recommended = engine.get_recommendations(item_sequence=sequence, gender="M", age=45, k=1)[0]
    explanation = engine.explain_recommendation(None, sequence, recommended["movie_id"], gender="M", age=45)
    item = int(np.searchsorted(data.item_ids[1:-1], recommended["movie_id"])) + 1
    tokens = (0, 2, 5, 0)  # a new user: no identity; men, aged 45-49

    def model_log_probability(kept: list[int], user=tokens) -> float:
        return reference_scores(model, kept, [DAY] * len(kept), user).log_softmax(dim=-1)[item].item()

    base = model_log_probability(items)
    expected = {data.item_ids[i]: base - model_log_probability([j for j in items if j != i]) for i in items}
    drops = {d["movie_id"]: d["score_drop"] for d in explanation["drivers"]}
    assert drops == pytest.approx(expected, abs=1e-4)
    assert max(drops.values()) - min(drops.values()) > 0.01  # the movies differ (not one shared number)
    hidden_gender = model_log_probability(items, (0, 0, 5, 0))
    assert explanation["user_tokens"]["gender"]["score_drop"] == pytest.approx(base - hidden_gender, abs=1e-4)
    prior = explanation["signup_prior"]
    weight = engine.new_user_prior_weight / (1 + (5 / engine.new_user_prior_fade) ** engine.new_user_prior_steepness)
    assert prior["held_fixed"] and prior["weight"] == pytest.approx(weight)
    assert prior["score_term"] == pytest.approx(weight * reference_signup_log_prior(data, 5, 2, 5)[item].item(),
                                                abs=1e-4)
    assert explanation["recommended"]["score"] == pytest.approx(base + prior["score_term"], abs=1e-4)
    assert explanation["recommended"]["score"] == pytest.approx(recommended["score"], abs=1e-5)
    assert "score changes measured on the model's scores, the sign-up prior held fixed" in explanation["sentence"]
    known = engine.explain_recommendation(int(data.user_ids[3]), None, recommended["movie_id"])
    assert known["signup_prior"] is None and "sign-up prior" not in known["sentence"]


def test_explanation_for_a_demographics_only_user(trained):
    engine = trained.engine
    recommended = engine.get_recommendations(gender="M", age=45, k=1)[0]
    explanation = engine.explain_recommendation(None, None, recommended["movie_id"], gender="M", age=45)
    assert explanation["strategy"] == "demographics" and explanation["drivers"] == []
    assert set(explanation["user_tokens"]) == {"gender", "age"}  # only known tokens are read
    assert "from your profile alone" in explanation["sentence"]


# ----------------------------------------------------------------------------------------------------------
# Profile


def test_user_profile_from_the_metadata(trained):
    data, engine = trained.data, trained.engine
    user = 6
    profile = engine.get_user_profile(int(data.user_ids[user]))
    lines = (trained.data_dir / "users.dat").read_text(encoding="latin-1").splitlines()
    _, gender, age, occupation, _ = next(
        line for line in lines if line.startswith(f"{data.user_ids[user]}::")
    ).split("::")
    assert profile["gender"] == gender and profile["age"] == int(age)
    assert profile["occupation_code"] == int(occupation) and profile["occupation"] == OCCUPATIONS[int(occupation)]
    assert profile["age_group"] == {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49",
                                    50: "50-55", 56: "56+"}[int(age)]
    movie_ids, _, _ = history(data, user)
    assert profile["num_ratings"] == len(movie_ids)
    start, stop = data.seq_offsets[user], data.seq_offsets[user + 1]
    assert profile["mean_rating"] == pytest.approx(data.seq_ratings[start:stop].mean(), abs=1e-3)
    assert [m["movie_id"] for m in profile["recent_movies"]] == movie_ids[::-1][:5].tolist()
    assert profile["top_genres"][0]["share"] >= profile["top_genres"][-1]["share"] > 0


# ----------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_requests_raise_specific_errors(trained):
    engine, data = trained.engine, trained.data
    user_id = int(data.user_ids[1])
    with pytest.raises(UnknownUserError, match="999999"):
        engine.get_recommendations(user_id=999_999)
    with pytest.raises(UnknownUserError):
        engine.get_user_profile(999_999)
    with pytest.raises(UnknownItemError, match="424242"):
        engine.get_recommendations(user_id=user_id, item_sequence=[int(data.item_ids[1]), 424242])
    with pytest.raises(UnknownItemError):
        engine.explain_recommendation(user_id, None, -5)
    for k in (0, -3, 2.5, "10"):
        with pytest.raises(InferenceError, match="k must"):
            engine.get_recommendations(user_id=user_id, k=k)
    for bad in ("12", 1.5, True):
        with pytest.raises(InferenceError, match="user_id must be an integer"):
            engine.get_recommendations(user_id=bad)
    with pytest.raises(InferenceError, match="item_sequence must hold integers"):
        engine.get_recommendations(user_id=user_id, item_sequence=[1, "5"])
    with pytest.raises(InferenceError, match="item_sequence must be a list"):
        engine.get_recommendations(user_id=user_id, item_sequence="1,5")
    with pytest.raises(InferenceError, match="timestamps has 1 values for 2 items"):
        engine.get_recommendations(item_sequence=data.item_ids[[1, 2]].tolist(), timestamps=[978307200])
    with pytest.raises(InferenceError, match="timestamps describe item_sequence"):
        engine.get_recommendations(user_id=user_id, timestamps=[978307200])
    with pytest.raises(InferenceError, match="item_sequences has 1 rows for 2 user_ids"):
        engine.score_batch([user_id, user_id], [[int(data.item_ids[1])]])
    with pytest.raises(InferenceError, match="timestamps need item_sequences"):
        engine.score_batch([user_id], timestamps=[[978307200]])
    with pytest.raises(InferenceError, match="batch_size must be positive"):
        engine.score_batch([user_id], batch_size=0)
    with pytest.raises(InferenceError, match="gender"):
        engine.get_recommendations(gender="X")
    with pytest.raises(InferenceError, match="age"):
        engine.get_recommendations(age=0)
    with pytest.raises(InferenceError, match="occupation"):
        engine.get_recommendations(occupation=21)
    assert all(issubclass(error, InferenceError) and issubclass(error, ValueError)
               for error in (UnknownUserError, UnknownItemError, ColdItemError, CheckpointError, MetadataError))


def test_bad_files_raise_specific_errors(trained, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        RecommendationEngine(tmp_path / "missing.pt", trained.metadata)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(trained.checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        RecommendationEngine(corrupt, trained.metadata)
    with pytest.raises(MetadataError, match="does not exist"):
        RecommendationEngine(trained.checkpoint, tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text(trained.metadata.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    with pytest.raises(MetadataError, match="cannot be read"):
        RecommendationEngine(trained.checkpoint, broken)
    other = load_dataset(write_ordered_ml1m(tmp_path / "other", num_users=30, seed=5), verify=False)
    other_metadata = save_metadata(other, tmp_path / "other.json")
    with pytest.raises(MetadataMismatchError, match="other data"):
        RecommendationEngine(trained.checkpoint, other_metadata)
    with pytest.raises(InferenceError, match="default_day_of_year"):
        RecommendationEngine(trained.checkpoint, trained.metadata, default_day_of_year=367)
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="no CUDA GPU"):
            RecommendationEngine(trained.checkpoint, trained.metadata, device="cuda")


# ----------------------------------------------------------------------------------------------------------
# The command line, as a user runs it


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO / "inference.py"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_cli(trained):
    data = trained.data
    paths = ["--model_path", str(trained.checkpoint), "--metadata_path", str(trained.metadata), "--device", "cpu"]
    user_id = str(data.user_ids[3])
    expected = trained.engine.get_recommendations(user_id=int(user_id), k=3)

    table = run_cli(*paths, "--user_id", user_id, "--k", "3", "--profile", "--explain")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "movie_id", "title"])
    rows = [line for line in lines[header + 1:] if not line.strip().startswith("why:")]
    assert [int(row.split()[1]) for row in rows] == [r["movie_id"] for r in expected]
    assert all(r["title"] in table.stdout for r in expected)
    assert sum(line.strip().startswith("why: We recommend") for line in lines) == 3
    assert f"user {user_id}:" in lines[0]  # the profile comes first

    as_json = run_cli(*paths, "--user_id", user_id, "--k", "3", "--json", "--explain", "--cold_items")
    assert as_json.returncode == 0, as_json.stderr
    output = json.loads(as_json.stdout)
    assert [r["movie_id"] for r in output["recommendations"]] == [r["movie_id"] for r in expected]
    assert output["strategy"] == "personalized" and "sentence" in output["recommendations"][0]["explanation"]
    assert {r["movie_id"] for r in output["cold_items"]} <= set(cold_movie_ids(data))

    new_user = run_cli(*paths, "--gender", "F", "--age", "30", "--occupation", "7", "--k", "2", "--json",
                       "--item_sequence", ",".join(map(str, data.item_ids[[1, 2]])))
    assert new_user.returncode == 0, new_user.stderr
    assert json.loads(new_user.stdout)["strategy"] == "sequence"
    for weight in (0.0, 2.0):  # the flag reaches the engine: the list equals the API's at that weight
        listed = run_cli(*paths, "--gender", "F", "--age", "30", "--k", "5", "--json", "--new_user_prior_weight",
                         str(weight), "--item_sequence", ",".join(map(str, data.item_ids[[1, 2]])))
        api = RecommendationEngine(trained.checkpoint, trained.metadata, device="cpu", new_user_prior_weight=weight)
        expected_new = api.get_recommendations(item_sequence=data.item_ids[[1, 2]].tolist(), gender="F", age=30,
                                               k=5)
        assert [r["score"] for r in json.loads(listed.stdout)["recommendations"]] == pytest.approx(
            [r["score"] for r in expected_new], abs=1e-5)
    windowed = run_cli(*paths, "--gender", "F", "--age", "30", "--k", "5", "--json", "--new_user_prior_window", "0",
                       "1", "--new_user_prior_steepness", "3", "--new_user_prior_fade", "1",
                       "--item_sequence", ",".join(map(str, data.item_ids[[1, 2]])))
    api = RecommendationEngine(trained.checkpoint, trained.metadata, device="cpu", new_user_prior_window=(0, 1),
                               new_user_prior_steepness=3.0, new_user_prior_fade=1.0)
    expected_new = api.get_recommendations(item_sequence=data.item_ids[[1, 2]].tolist(), gender="F", age=30, k=5)
    assert [r["score"] for r in json.loads(windowed.stdout)["recommendations"]] == pytest.approx(
        [r["score"] for r in expected_new], abs=1e-5)

    for args, status, message in [
        (["--user_id", "999999"], 1, "unknown user_id 999999"),
        (["--user_id", user_id, "--new_user_prior_weight", "-1"], 1, "new_user_prior_weight must be a finite"),
        (["--user_id", user_id, "--new_user_prior_window", "0", "0"], 1, "new_user_prior_window must be two whole"),
        (["--user_id", user_id, "--new_user_prior_steepness", "0"], 1, "new_user_prior_steepness must be a finite"),
        (["--user_id", "abc"], 2, "--user_id"),
        (["--user_id", user_id, "--k", "0"], 1, "k must be positive"),
        (["--user_id", user_id, "--item_sequence", "1,x"], 2, "--item_sequence"),
        (["--user_id", user_id, "--item_sequence", "424242"], 1, "unknown MovieID"),
    ]:
        failed = run_cli(*paths, *args)
        assert failed.returncode == status, (args, failed.stderr)
        assert failed.stderr.count("\n") == 1 and message in failed.stderr and "Traceback" not in failed.stderr
    missing = run_cli("--model_path", str(trained.out / "nope.pt"), "--metadata_path", str(trained.metadata),
                      "--user_id", user_id)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nope.pt" in missing.stderr


def test_cli_options_in_process(trained, capsys):
    data = trained.data
    paths = ["--model_path", str(trained.checkpoint), "--metadata_path", str(trained.metadata), "--device", "cpu"]
    movie_ids, _, _ = history(data, 3)
    sequence = ",".join(map(str, movie_ids[:4]))
    assert main([*paths, "--user_id", str(data.user_ids[3]), "--item_sequence", sequence, "--include_seen",
                 "--timestamps", "978307200,978310000,978393600,978400000", "--k", "200", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert len(output["recommendations"]) == data.num_items  # nothing excluded
    expected = trained.engine.get_recommendations(
        user_id=int(data.user_ids[3]), item_sequence=movie_ids[:4].tolist(), k=200, filter_seen=False,
        timestamps=[978307200, 978310000, 978393600, 978400000])
    assert as_scores(output["recommendations"]) == as_scores(expected)

    assert main([*paths, "--k", "3", "--cold_items", "--explain"]) == 0
    text = capsys.readouterr().out
    assert "strategy: popularity; score: ratings in the training data" in text
    assert "never-rated movies, by genre/year similarity" in text and "why: Nothing is known" in text
    # a new user's scores say what they are: with the prior log-probabilities plus it, without it the model's
    for weight, label in (("16", "the model's log-probabilities plus the weighted log sign-up prior"),
                          ("0", "the model's item scores")):
        assert main([*paths, "--k", "3", "--gender", "F", "--age", "30", "--new_user_prior_weight", weight]) == 0
        assert f"strategy: demographics; score: {label})" in capsys.readouterr().out

    with pytest.raises(SystemExit) as stopped:  # flags that cannot go together: a usage error, exit status 2
        main([*paths, "--profile"])
    assert stopped.value.code == 2 and capsys.readouterr().err == "error: --profile needs --user_id (see --help)\n"


# ----------------------------------------------------------------------------------------------------------
# Real ML-1M


def test_real_data_batch_scores_equal_trainer_evaluate(real_ml1m_dir, tmp_path):
    """On the real ML-1M (ties in timestamps included), the engine's inputs and scores are the trainer's."""
    data = load_dataset(real_ml1m_dir, seq_length=50)
    write_untrained_checkpoint(tmp_path / "model.pt", data, TrainConfig(hidden_size=16, num_heads=2, num_layers=1))
    model = load_model(tmp_path / "model.pt")
    engine = RecommendationEngine(tmp_path / "model.pt", save_metadata(data, tmp_path / "metadata.json"),
                                  device="cpu")
    test_inputs = eval_inputs(data, "test", 50)
    expected = evaluate(model, to_eval_tensors(test_inputs, torch.device("cpu")),
                        data_to_tensors(data, torch.device("cpu")), 512)
    sequences = np.split(data.item_ids[test_inputs.seen_items], test_inputs.seen_offsets[1:-1])
    batch = engine.score_batch(data.user_ids[1:].tolist(), [s.tolist() for s in sequences])
    columns = torch.from_numpy(test_inputs.targets - 1)
    metrics = ranking_metrics(target_ranks(batch.scores, columns))
    assert metrics == {name: value for name, value in expected.items() if name in metrics}


def test_real_checkpoint_reproduces_its_results(real_ml1m_dir, real_short_run):
    """A checkpoint trained on the real ML-1M in this test session (or $INFERENCE_CHECKPOINT, with the
    metadata.json beside it or $INFERENCE_METADATA): the engine's scores reproduce its results.json exactly."""
    _, run = real_short_run
    checkpoint = Path(os.environ.get("INFERENCE_CHECKPOINT", run / "best_model.pt"))
    metadata = Path(os.environ.get("INFERENCE_METADATA", checkpoint.with_name("metadata.json")))
    results = json.loads(checkpoint.with_name("results.json").read_text())
    engine = RecommendationEngine(checkpoint, metadata, device="cpu")
    seq_length = engine.config.seq_length
    data = load_dataset(real_ml1m_dir, seq_length=seq_length)
    assert data.fingerprint == results["data_fingerprint"], f"{checkpoint} was not trained on {real_ml1m_dir}"
    test_inputs = eval_inputs(data, "test", seq_length)
    sequences = np.split(data.item_ids[test_inputs.seen_items], test_inputs.seen_offsets[1:-1])
    batch = engine.score_batch(data.user_ids[1:].tolist(), [s.tolist() for s in sequences])
    metrics = ranking_metrics(target_ranks(batch.scores, torch.from_numpy(test_inputs.targets - 1)))
    # exactly on the CPU; from another device (GPU) the scores differ in the last bits, which can flip near-ties
    tolerance = 0.0 if results["device"] == "cpu" else 2e-3
    for name, value in metrics.items():
        assert value == pytest.approx(results["test"][name], abs=tolerance, rel=0), name


# ----------------------------------------------------------------------------------------------------------
# Predicted ratings, batch export, pictures


def reference_rating(model, data, user: int, movie_id: int) -> float:
    """The rating head's prediction for one movie after a user's whole history, from the bare model."""
    _, items, days = history(data, user)
    width = model.config.seq_length - 1
    items, days = list(items)[-width:], list(days)[-width:]
    padding = [0] * (width - len(items))
    item_seq = torch.tensor([padding + items + [model.config.mask_index]])
    day_seq = torch.tensor([padding + days + [days[-1]]])
    item = int(np.flatnonzero(data.item_ids == movie_id)[0])
    with torch.no_grad():
        hidden = model(item_seq, day_seq, **token_inputs(user_tokens(data, user))).hidden[:, -1]
        return model.predict_rating(hidden, torch.tensor([item]), torch.tensor([user])).item()


def test_recommendations_carry_the_rating_heads_prediction(trained):
    data, engine = trained.data, trained.engine
    user = 5
    records = engine.get_recommendations(user_id=int(data.user_ids[user]), k=4)
    for record in records:
        expected = reference_rating(trained.model, data, user, record["movie_id"])
        assert record["predicted_rating"] == pytest.approx(expected, abs=1e-5)
        assert 1.0 <= record["predicted_rating"] <= 5.0 and isinstance(record["predicted_rating"], float)
    popular = engine.get_recommendations(k=3)  # nothing known: the model does not read this user
    assert popular[0]["strategy"] == "popularity" and all(r["predicted_rating"] is None for r in popular)


def test_export_all_users_csv_and_jsonl(trained, tmp_path):
    import csv

    data, engine = trained.data, trained.engine
    rows = engine.export_recommendations(tmp_path / "recs.csv", k=3, batch_size=7, progress=False)
    with open(tmp_path / "recs.csv", newline="", encoding="utf-8") as file:
        table = list(csv.DictReader(file))
    assert rows == len(table) == 3 * data.num_users
    assert sorted({int(r["user_id"]) for r in table}) == engine.user_ids
    by_user: dict[int, list[dict]] = {}
    for row in table:
        by_user.setdefault(int(row["user_id"]), []).append(row)
    for user_id, user_rows in by_user.items():
        assert [int(r["rank"]) for r in user_rows] == [1, 2, 3]
        index = int(np.flatnonzero(data.user_ids == user_id)[0])
        seen = set(history(data, index)[0].tolist())
        assert not seen & {int(r["movie_id"]) for r in user_rows}  # the known history is excluded
    for user_id in engine.user_ids[::9]:  # a sample: identical to per-user calls
        single = engine.get_recommendations(user_id=user_id, k=3)
        exported = by_user[user_id]
        assert [int(r["movie_id"]) for r in exported] == [r["movie_id"] for r in single]
        assert [float(r["score"]) for r in exported] == pytest.approx([r["score"] for r in single], abs=1e-5)
        assert [float(r["predicted_rating"]) for r in exported] == pytest.approx(
            [r["predicted_rating"] for r in single], abs=1e-5)
        assert {r["strategy"] for r in exported} == {"personalized"}
    some = engine.user_ids[:4]
    assert engine.export_recommendations(tmp_path / "some.jsonl", user_ids=some, k=2, progress=False) == 8
    lines = [json.loads(line) for line in (tmp_path / "some.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["rank"]) for r in lines] == [(u, rank) for u in some for rank in (1, 2)]
    assert [r["movie_id"] for r in lines[:2]] == [int(r["movie_id"]) for r in by_user[some[0]][:2]]


def test_export_refuses_bad_paths_and_leaves_nothing_behind(trained, tmp_path):
    engine = trained.engine
    with pytest.raises(InferenceError, match=r"\.csv or \.jsonl"):
        engine.export_recommendations(tmp_path / "recs.txt", progress=False)
    with pytest.raises(InferenceError, match="does not exist"):
        engine.export_recommendations(tmp_path / "missing" / "recs.csv", progress=False)
    with pytest.raises(UnknownUserError):  # fails mid-way: no file, no temporary file
        engine.export_recommendations(tmp_path / "recs.csv", user_ids=[engine.user_ids[0], 999999], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_all_users_export(trained, tmp_path):
    paths = ["--model_path", str(trained.checkpoint), "--metadata_path", str(trained.metadata), "--device", "cpu"]
    done = run_cli(*paths, "--all_users", "--k", "2", "--output", str(tmp_path / "recs.jsonl"))
    assert done.returncode == 0, done.stderr
    assert f"wrote {2 * trained.data.num_users} recommendations" in done.stdout
    assert len((tmp_path / "recs.jsonl").read_text().splitlines()) == 2 * trained.data.num_users
    lonely = run_cli(*paths, "--all_users")
    assert lonely.returncode == 2 and lonely.stderr.count("\n") == 1 and "--output" in lonely.stderr


def test_cli_table_shows_the_predicted_rating_with_one_decimal(trained):
    paths = ["--model_path", str(trained.checkpoint), "--metadata_path", str(trained.metadata), "--device", "cpu"]
    user_id = int(trained.data.user_ids[2])
    expected = trained.engine.get_recommendations(user_id=user_id, k=3)
    table = run_cli(*paths, "--user_id", str(user_id), "--k", "3")
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "movie_id", "title"])
    assert "rating" in lines[header].split()
    for line, record in zip(lines[header + 1:], expected, strict=True):
        assert f" {record['predicted_rating']:.1f} " in line


def test_explanation_influence_plot(trained, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib draws the chart (requirements-extra.txt)")
    data, engine = trained.data, trained.engine
    user_id = int(data.user_ids[4])
    movie_id = engine.get_recommendations(user_id=user_id, k=1)[0]["movie_id"]
    explanation = engine.explain_recommendation(user_id, None, movie_id, plot=tmp_path / "why.png")
    assert explanation["plot"] == str(tmp_path / "why.png")
    assert (tmp_path / "why.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["why.png"]  # no temporary file left


# ----------------------------------------------------------------------------------------------------------
# Rating-aware lists, explanation wording, predicted genre mix


def test_min_predicted_rating_filters_and_keeps_k(trained):
    data, engine = trained.data, trained.engine
    user_id = int(data.user_ids[9])
    everything = engine.get_recommendations(user_id=user_id, k=data.num_items)
    ratings = sorted(r["predicted_rating"] for r in everything)
    threshold = ratings[len(ratings) * 3 // 4]  # three quarters of the unseen movies fall below it
    expected = [r["movie_id"] for r in everything if r["predicted_rating"] >= threshold][:6]
    filtered = engine.get_recommendations(user_id=user_id, k=6, min_predicted_rating=threshold)
    assert [r["movie_id"] for r in filtered] == expected and len(filtered) == 6
    assert [r["rank"] for r in filtered] == list(range(1, 7))
    assert all(r["predicted_rating"] >= threshold for r in filtered)
    few = engine.get_recommendations(user_id=user_id, k=50, min_predicted_rating=ratings[-3])
    assert [r["movie_id"] for r in few] == [r["movie_id"] for r in everything if r["predicted_rating"] >= ratings[-3]]
    batch = engine.recommend_batch([user_id], k=6, min_predicted_rating=threshold)[0]
    assert [r["movie_id"] for r in batch] == expected
    for bad in (0.5, 6, "4", True):
        with pytest.raises(InferenceError, match="min_predicted_rating must be a number in 1..5"):
            engine.get_recommendations(user_id=user_id, min_predicted_rating=bad)


def test_min_predicted_rating_needs_a_rating_head(trained, tmp_path):
    config = TrainConfig(hidden_size=32, num_heads=2, num_layers=1, seq_length=SEQ_LENGTH,
                         rating_prediction_weight=0.0)
    write_untrained_checkpoint(tmp_path / "no_rating.pt", trained.data, config)
    engine = RecommendationEngine(tmp_path / "no_rating.pt", trained.metadata, device="cpu")
    records = engine.get_recommendations(user_id=int(trained.data.user_ids[1]), k=3)
    assert len(records) == 3 and all("predicted_rating" not in r for r in records)
    with pytest.raises(InferenceError, match="needs a checkpoint with a rating head"):
        engine.get_recommendations(user_id=int(trained.data.user_ids[1]), min_predicted_rating=3.0)


def test_explaining_a_movie_below_the_top_k_gives_its_rank(trained):
    data, engine = trained.data, trained.engine
    user_id = int(data.user_ids[12])
    fifth = engine.get_recommendations(user_id=user_id, k=5)[-1]
    explanation = engine.explain_recommendation(user_id, None, fifth["movie_id"], k=3)
    assert explanation["recommended"]["rank"] == 5
    assert explanation["sentence"].startswith(f'"{fifth["title"]}" is ranked 5th for you, ')
    assert engine.explain_recommendation(user_id, None, fifth["movie_id"], k=5)["sentence"].startswith(
        f'We recommend "{fifth["title"]}"')
    seen = int(history(data, 12)[0][0])
    with pytest.raises(AlreadySeenError, match=f"movie {seen} is already in this user's history"):
        engine.explain_recommendation(user_id, None, seen)


def test_profile_shows_the_preference_heads_genre_mix(trained):
    data, engine, model = trained.data, trained.engine, trained.model
    user = 6
    _, items, days = history(data, user)
    width = SEQ_LENGTH - 1
    item_seq = torch.tensor([[*items[-width:].tolist(), model.config.mask_index]])
    day_seq = torch.tensor([[*days[-width:].tolist(), int(days[-1])]])
    with torch.no_grad():
        hidden = model(item_seq, day_seq, **token_inputs(user_tokens(data, user))).hidden
        mix = model.predict_preference(hidden, item_seq).softmax(dim=-1)[0]
    top = torch.argsort(mix, descending=True, stable=True)[:5].tolist()
    profile = engine.get_user_profile(int(data.user_ids[user]))
    assert [g["genre"] for g in profile["predicted_top_genres"]] == [GENRES[g] for g in top]
    assert [g["share"] for g in profile["predicted_top_genres"]] == pytest.approx(
        [round(mix[g].item(), 3) for g in top], abs=1e-3)


def test_cli_prints_a_repeated_warning_once(trained):
    paths = ["--model_path", str(trained.checkpoint), "--metadata_path", str(trained.metadata), "--device", "cpu"]
    cold = cold_movie_ids(trained.data)[0]
    warm = trained.data.item_ids[1:3].tolist()
    answer = run_cli(*paths, "--item_sequence", f"{warm[0]},{cold},{warm[1]}", "--k", "3", "--explain")
    assert answer.returncode == 0, answer.stderr
    assert answer.stderr.splitlines() == [f"warning: never-rated MovieID(s) [{cold}] in the history: the model has "
                                          "no embedding for them and skips them"]


def test_cli_output_into_a_closed_pipe_is_quiet(trained):
    paths = ["--model_path", str(trained.checkpoint), "--metadata_path", str(trained.metadata), "--device", "cpu"]
    command = [sys.executable, str(REPO / "inference.py"), *paths, "--user_id", str(trained.data.user_ids[1]),
               "--k", "50", "--json", "--explain"]
    reader = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    writer = subprocess.run(command, stdout=reader.stdin, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    reader.stdin.close()
    reader.wait()
    assert writer.returncode == 0 and "Traceback" not in writer.stderr and writer.stderr == ""


# ----------------------------------------------------------------------------------------------------------
# Chunked scoring: bounded memory, the same rankings


def test_evaluation_in_chunks_of_any_size_gives_the_same_metrics(trained):
    """trainer.evaluate scores eval_batch_size users at a time (never a users x items matrix): the metrics are
    exactly those of one chunk holding every user."""
    data = trained.data
    split = to_eval_tensors(eval_inputs(data, "test", SEQ_LENGTH), torch.device("cpu"))
    tensors = data_to_tensors(data, torch.device("cpu"))
    whole = evaluate(trained.model, split, tensors, data.num_users)
    ranking = [name for name in whole if "@" in name]
    assert len(ranking) == 8
    for batch_size in (1, 7, 64):
        chunked = evaluate(trained.model, split, tensors, batch_size)
        assert {name: chunked[name] for name in ranking} == {name: whole[name] for name in ranking}  # exactly
        assert chunked == pytest.approx(whole, rel=1e-5)  # the auxiliary heads' means: summed in another order


def test_the_export_in_chunks_of_any_size_writes_the_same_rankings(trained, tmp_path):
    """export_recommendations streams chunks of batch_size users: the file is the same whatever the chunk (the
    scores to float precision: a chunk's matrix products may round differently)."""
    def rows(batch_size: int) -> list[list[str]]:
        path = tmp_path / f"top_{batch_size}.csv"
        trained.engine.export_recommendations(path, k=10, batch_size=batch_size, progress=False)
        return list(csv.reader(path.read_text().splitlines()))

    whole = rows(10_000)
    assert len(whole) == 1 + 10 * len(trained.engine.user_ids)
    score = whole[0].index("score")
    for batch_size in (1, 7):
        chunked = rows(batch_size)
        assert [row[:score] for row in chunked] == [row[:score] for row in whole]
        assert np.allclose([float(row[score]) for row in chunked[1:]], [float(row[score]) for row in whole[1:]],
                           rtol=1e-5, atol=1e-6)


def test_bf16_scoring_ranks_as_fp32_does_and_is_not_a_no_op(trained):
    """precision="bf16" runs the encoder under bf16 autocast (item scores in fp32): its scores differ from fp32's
    by bf16 rounding only, so each user's best movie and almost all top 10s are the same; fp32 stays the default
    and equals the trainer's arithmetic exactly."""
    users = trained.engine.user_ids
    fp32 = trained.engine.score_batch(users).scores
    bf16_engine = RecommendationEngine(trained.checkpoint, trained.metadata, device="cpu", default_day_of_year=DAY,
                                       precision="bf16")
    bf16 = bf16_engine.score_batch(users).scores
    assert trained.engine.precision == "fp32" and bf16.dtype == fp32.dtype == torch.float32
    assert not torch.equal(bf16, fp32)  # the encoder really ran in bf16
    finite = torch.isfinite(fp32)
    assert torch.equal(finite, torch.isfinite(bf16))  # the same movies excluded
    spread = fp32[finite].std()
    assert float((bf16 - fp32)[finite].abs().max()) < 0.1 * float(spread)
    assert torch.equal(bf16.argmax(dim=1), fp32.argmax(dim=1))
    same_top10 = (bf16.topk(10).indices.sort().values == fp32.topk(10).indices.sort().values).all(dim=1)
    assert float(same_top10.float().mean()) >= 0.9
    # bench_inference's agreement count: scores agree with themselves for every user, bf16 with fp32 for most, and
    # the count is the one recommend_batch's own lists give
    assert top10_agreement(fp32, fp32) == (1.0, 1.0)
    same_list, same_set = top10_agreement(bf16, fp32)
    lists = [[[r["movie_id"] for r in top] for top in engine.recommend_batch(users, k=10, batch_size=7)]
             for engine in (bf16_engine, trained.engine)]
    assert same_list == sum(a == b for a, b in zip(*lists, strict=True)) / len(users)
    assert same_set == sum(set(a) == set(b) for a, b in zip(*lists, strict=True)) / len(users)
    assert same_list <= same_set and same_set == float(same_top10.double().mean())
    # every user whose top 10 differs is within twice the largest score difference of a tie
    ties = near_ties(bf16, fp32)
    assert ties["difference_max"] == float((bf16 - fp32)[finite].abs().max()) > 0
    assert 1 - same_set <= ties["set_share"] <= ties["order_share"] and 1 - same_list <= ties["order_share"]
    assert near_ties(fp32, fp32)["difference_max"] == 0.0
    bf16_engine.precision = "fp32"  # an attribute: the engine then scores exactly as the default one
    assert torch.equal(bf16_engine.score_batch(users).scores, fp32)


def test_the_benchmark_s_two_parts_of_recommend_batch_are_recommend_batch(trained):
    users = trained.engine.user_ids[:20]
    scoring_seconds, records_seconds, records = recommend_batch_parts(trained.engine, users, 7)
    assert records == trained.engine.recommend_batch(users, k=10, batch_size=7)
    assert len(records) == 20 and all(len(top) == 10 for top in records)
    assert scoring_seconds > 0 and records_seconds > 0


@pytest.mark.parametrize("precision", ["fp16", "BF16", None, 16])
def test_an_unknown_precision_is_refused_naming_it(trained, precision):
    with pytest.raises(InferenceError, match=r"precision must be one of fp32, bf16, got"):
        RecommendationEngine(trained.checkpoint, trained.metadata, device="cpu", precision=precision)
    with pytest.raises(InferenceError, match=r"precision must be one of fp32, bf16"):
        trained.engine.precision = precision
    assert trained.engine.precision == "fp32"


def test_the_cli_scores_in_bf16_on_request(trained):
    """--precision reaches the engine: the listed scores are the bf16 engine's, not the fp32 one's."""
    common = ["--model_path", str(trained.checkpoint), "--metadata_path", str(trained.metadata), "--device", "cpu",
              "--json", "--k", "5", "--user_id", str(trained.engine.user_ids[0])]
    done = run_cli(*common, "--precision", "bf16")
    assert done.returncode == 0, done.stderr
    listed = [(r["movie_id"], r["score"]) for r in json.loads(done.stdout)["recommendations"]]
    api = RecommendationEngine(trained.checkpoint, trained.metadata, device="cpu", precision="bf16")
    expected = api.get_recommendations(user_id=trained.engine.user_ids[0], k=5)
    assert [movie for movie, _ in listed] == [r["movie_id"] for r in expected]
    assert [score for _, score in listed] == pytest.approx([r["score"] for r in expected], rel=1e-6)
    fp32 = trained.engine.get_recommendations(user_id=trained.engine.user_ids[0], k=5)
    assert [score for _, score in listed] != pytest.approx([r["score"] for r in fp32], rel=1e-6)
    refused = run_cli(*common, "--precision", "fp16")
    assert refused.returncode == 2 and "--precision: invalid choice: 'fp16'" in refused.stderr
