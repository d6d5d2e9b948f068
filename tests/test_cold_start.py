"""The cold-start hold-outs (EVALUATION.md), their training runs, the engine calls the benchmark relies on, and
benchmarks/cold_start.py's cases and ranks, checked against answers worked out here."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY

from benchmarks.cold_start import (
    PRIOR,
    PRIOR_FADES,
    PRIOR_STEEPNESS,
    PRIOR_WEIGHTS,
    PRIOR_WINDOWS,
    VALIDATION_REMAINDER,
    Cases,
    engine_scores,
    log_prior_scores,
    new_user_cases,
    popularity_scores,
    prior_counts,
    ranks_of,
    short_context_cases,
)
from benchmarks.cold_start import (
    main as cold_start_main,
)
from data_processor import held_out_movies, held_out_users, load_dataset, load_metadata
from inference import NEW_USER_PRIOR_WINDOW, InferenceError, RecommendationEngine, UnknownUserError, faded_weight
from trainer import ConfigError, load_checkpoint, parse_args, train, training_events

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def assert_nothing_held_out_reaches_training(data):
    """No held-out user or movie in the users, items, timelines, windows or the training counts."""
    assert not held_out_users(data.user_ids[1:]).any()
    assert not held_out_movies(data.item_ids[1:-1]).any()
    movies_in_timelines = data.item_ids[data.seq_items]
    assert not held_out_movies(movies_in_timelines).any()
    window_movies = data.item_ids[data.window_items[data.window_items > 0]]
    assert not held_out_movies(window_movies).any()
    assert not held_out_users(data.user_ids[data.window_users]).any()
    users, items, _ = training_events(data)
    assert not held_out_users(data.user_ids[users]).any() and not held_out_movies(data.item_ids[items]).any()


def test_holdouts_on_the_real_data(real_ml1m_dir):
    full = load_dataset(real_ml1m_dir)
    held = load_dataset(real_ml1m_dir, holdout_users=True, holdout_items=True)
    assert_nothing_held_out_reaches_training(held)
    # 604 users leave (UserID % 10 == 0); every rating of a movie with MovieID % 20 == 0 leaves with them
    assert held.num_users == full.num_users - 604 == 5436
    assert held_out_movies(full.item_ids[1:-1]).sum() == 182
    full_users = np.repeat(full.user_ids[1:], np.diff(full.seq_offsets)[1:])
    full_movies = full.item_ids[full.seq_items]
    kept = ~held_out_users(full_users) & ~held_out_movies(full_movies)
    assert len(held.seq_items) == kept.sum() == 844_819
    # the movies left are those some kept user rated, so 35 movies rated only by held-out users leave too
    assert held.num_items == len(np.unique(full_movies[kept])) == 3489
    # a kept user's timeline is their full timeline without the held-out movies, in the same order
    for user_id in (1, 11, 6039):
        u_full, u_held = (np.flatnonzero(d.user_ids == user_id)[0] for d in (full, held))
        movies = full.item_ids[full.seq_items[full.seq_offsets[u_full]:full.seq_offsets[u_full + 1]]]
        held_movies = held.item_ids[held.seq_items[held.seq_offsets[u_held]:held.seq_offsets[u_held + 1]]]
        assert held_movies.tolist() == movies[~held_out_movies(movies)].tolist()
    assert held.fingerprint != full.fingerprint  # a checkpoint of one is refused on the other
    only_users = load_dataset(real_ml1m_dir, holdout_users=True)
    assert only_users.num_items == len(np.unique(full_movies[~held_out_users(full_users)])) == 3670
    assert not held_out_users(only_users.user_ids[1:]).any()


def test_holdout_run_records_its_rules_and_refuses_other_rules_on_resume(synthetic_ml1m_dir, tmp_path):
    out = tmp_path / "run"
    config = parse_args([*TINY, "--data_dir", str(synthetic_ml1m_dir), "--checkpoint_dir", str(out),
                         "--max_epochs", "1", "--holdout_users", "--holdout_items"])
    _, results = train(config)
    assert results["train_config"]["holdout_users"] is True and results["train_config"]["holdout_items"] is True
    assert json.loads((out / "results.json").read_text())["train_config"]["holdout_items"] is True
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["train_config"]["holdout_users"] is True
    metadata = load_metadata(out / "metadata.json")
    assert metadata["params"]["holdout"] == "users,items"
    assert not any(user_id % 10 == 0 for user_id in metadata["users"])
    assert not any(movie_id % 20 == 0 for movie_id in metadata["item_index_by_movie_id"])
    # resuming alone keeps the rules; a flag that changes them is refused naming it
    assert parse_args(["--resume", str(out / "last.pt")]).holdout_items is True
    with pytest.raises(ConfigError, match=r"--no-holdout_users|holdout_users"):
        parse_args(["--resume", str(out / "last.pt"), "--no-holdout_users"])
    # the engine serves a held-out user only as a new user, and a held-out movie only by its metadata
    engine = RecommendationEngine(out / "best_model.pt", device="cpu")
    with pytest.raises(UnknownUserError):
        engine.get_recommendations(10)
    assert engine.get_recommendations(10, gender="F", age=30)[0]["strategy"] == "demographics"
    # its sign-up prior counts the known users' training parts only: with an overwhelming weight a new user's
    # scores are 1e6 x the log prior, counted here by hand (n = 0: positions 0 .. after - 1; women aged 25-34)
    known = load_dataset(synthetic_ml1m_dir, holdout_users=True, holdout_items=True)
    group, overall = np.zeros(known.num_items + 2), np.zeros(known.num_items + 2)
    for u in range(1, known.num_users + 1):
        for item in known.seq_items[known.seq_offsets[u]:known.seq_offsets[u + 1] - 2][:NEW_USER_PRIOR_WINDOW[1]]:
            overall[item] += 1
            group[item] += known.user_values["gender"][u] == 1 and known.user_values["age"][u] == 3
    expected = np.log(0.5 * group / group.sum() + 0.5 * overall / overall.sum() + 1e-6)[1:-1]
    engine.new_user_prior_weight = 1e6
    scores = engine.score_batch([None], [[]], demographics=[{"gender": "F", "age": 30}]).scores[0].double() / 1e6
    assert scores.numpy() == pytest.approx(expected, abs=1e-4)
    engine.new_user_prior_weight = 1.0
    held_movies = [m for m in metadata["movies"] if m % 20 == 0]
    cold = engine.get_cold_item_recommendations(None, [], k=100, movie_ids=held_movies)
    assert sorted(r["movie_id"] for r in cold) == sorted(held_movies)
    warm = next(iter(metadata["item_index_by_movie_id"]))
    with pytest.raises(InferenceError, match="have an embedding"):
        engine.get_cold_item_recommendations(None, [], movie_ids=[warm])


def test_score_batch_takes_demographics_per_row(synthetic_ml1m_dir, tmp_path):
    out = tmp_path / "run"
    train(parse_args([*TINY, "--data_dir", str(synthetic_ml1m_dir), "--checkpoint_dir", str(out),
                      "--max_epochs", "1"]))
    engine = RecommendationEngine(out / "best_model.pt", device="cpu")
    rows = [{"gender": "F", "age": "25-34", "occupation": 3}, {"gender": "M", "age": 60}, None]
    batch = engine.score_batch([None, None, None], [[], [], []], demographics=rows)
    assert batch.strategies == ["demographics", "demographics", "popularity"]
    for row, demographics in enumerate(rows[:2]):
        single = engine.score_batch([None], [[]], demographics=[demographics]).scores[0]
        one = engine.get_recommendations(None, [], k=3, **demographics)
        assert torch.allclose(batch.scores[row], single)
        top = batch.movie_ids[torch.argsort(batch.scores[row], descending=True, stable=True)[:3].numpy()]
        assert top.tolist() == [r["movie_id"] for r in one]
    assert not torch.equal(batch.scores[0], batch.scores[1])
    with pytest.raises(InferenceError, match="demographics has 1 rows for 3"):
        engine.score_batch([None, None, None], [[], [], []], demographics=[None])
    with pytest.raises(InferenceError, match=r"demographics\[0\]"):
        engine.score_batch([None], [[]], demographics=[{"height": 180}])


def test_cases_follow_the_protocol(synthetic_ml1m_dir):
    world = load_dataset(synthetic_ml1m_dir, holdout_items=True)
    known = load_dataset(synthetic_ml1m_dir, holdout_users=True, holdout_items=True)
    for n in (0, 1, 3):
        cases = new_user_cases(world, n)
        held = [u for u in range(1, world.num_users + 1) if world.user_ids[u] % 10 == 0
                and world.seq_offsets[u + 1] - world.seq_offsets[u] > n]
        assert len(cases.targets) == len(held) > 0 and all(user is None for user in cases.user_ids)
        for row, u in enumerate(held):
            movies = world.item_ids[world.seq_items[world.seq_offsets[u]:world.seq_offsets[u + 1]]]
            assert cases.sequences[row] == movies[:n].tolist() and cases.targets[row] == movies[n]
            assert cases.demographics[row]["gender"] in ("F", "M")
    cases = short_context_cases(known, 3)
    u = 5
    movies = known.item_ids[known.seq_items[known.seq_offsets[u]:known.seq_offsets[u + 1]]]
    assert cases.user_ids[u - 1] == known.user_ids[u]
    assert cases.sequences[u - 1] == movies[-4:-1].tolist() and cases.targets[u - 1] == movies[-1]
    assert cases.seen[u - 1].tolist() == movies[:-1].tolist()


def test_ranks_exclude_the_seen_movies_and_count_ties_against_the_target():
    universe = np.array([10, 20, 30, 40, 50])
    cases = Cases([None, None], [[], []], [[], []], [None, None], [np.array([20]), np.array([], np.int64)],
                  np.array([30, 30]), np.zeros((2, 2), np.int64))
    scores = torch.tensor([[1.0, 9.0, 5.0, 5.0, 0.0], [1.0, 9.0, 5.0, 5.0, 0.0]])
    # row 0: 20 is seen, so only the tied 40 counts against 30; row 1: 20 and the tie 40
    assert ranks_of(scores, universe, cases).tolist() == [1, 2]


def test_prior_counts_leave_the_validation_users_out(synthetic_ml1m_dir):
    known = load_dataset(synthetic_ml1m_dir, holdout_users=True, holdout_items=True)
    every, others = prior_counts(known), prior_counts(known, leave_out=VALIDATION_REMAINDER)
    # counted by hand: each left-out user's training part (all but the last two), first 40 positions, by position
    removed = np.zeros_like(every[-1, 0, 0])
    validation = [u for u in range(1, known.num_users + 1) if known.user_ids[u] % 10 == VALIDATION_REMAINDER]
    assert validation
    for u in validation:
        np.add.at(removed, known.seq_items[known.seq_offsets[u]:known.seq_offsets[u + 1] - 2][:40], 1)
    assert (every[-1, 0, 0] - others[-1, 0, 0]).tolist() == removed.tolist()
    gender, age = known.user_values["gender"][validation[0]], known.user_values["age"][validation[0]]
    assert (every[-1, gender, age] - others[-1, gender, age]).sum() > 0
    assert (others <= every).all()


def test_popularity_counts_only_the_training_part(synthetic_ml1m_dir):
    known = load_dataset(synthetic_ml1m_dir, holdout_users=True, holdout_items=True)
    universe = np.unique(known.item_ids[1:-1])
    overall, by_group = popularity_scores(known, universe)
    users, items, _ = training_events(known)
    assert overall.sum() == len(items)
    movie = known.item_ids[items[0]]
    assert overall[np.searchsorted(universe, movie)] == (known.item_ids[items] == movie).sum()
    assert sum(group.sum() for group in by_group.values()) == len(items)


def test_benchmark_end_to_end_on_synthetic_data(synthetic_ml1m_dir, tmp_path):
    out = tmp_path / "cold"
    flags = " ".join([*TINY, "--eval_batch_size", "64"])
    assert cold_start_main(["--data_dir", str(synthetic_ml1m_dir), "--out", str(out), "--seeds", "0",
                            "--config", flags, "--max_epochs", "1", "--models", "plain", "full"]) == 0
    result = json.loads((out / "cold_start.json").read_text())
    assert {"new users, n = 0", "new users, n = 1", "short context, n = 1"} <= set(result["rows"])
    assert result["rows"]["short context, n = 1"]["cases"] == load_dataset(
        synthetic_ml1m_dir, holdout_users=True, holdout_items=True).num_users
    for model in ("full", "plain"):
        run = json.loads((out / f"{model}_seed0" / "results.json").read_text())
        assert run["train_config"]["holdout_users"] and run["train_config"]["holdout_items"]
        assert run["model_config"]["use_user_tokens"] is (model == "full")
    items = result["new_items"]
    random_hr = items["random order"]["HR@10"]
    assert 0 < random_hr <= 1 and (items["candidates"] > 10 or random_hr == 1.0)
    text = (out / "cold_start.md").read_text()
    assert "| new users, n = 0 |" in text and "| target | model | required | measured | met |" in text
    # the prior's weight is chosen on known users playing new users; the full model is served with it, plain
    # BERT4Rec without; the other setting of each is the ablation, on the new-user rows only
    prior = result["prior"]
    assert prior["weight"] in PRIOR_WEIGHTS and prior["fade"] in PRIOR_FADES and prior["steepness"] in PRIOR_STEEPNESS
    assert tuple(prior["window"]) in PRIOR_WINDOWS
    # per window: weight 0 (no prior) once; each other weight with every finite fade and steepness, and without
    # fading (math.inf is among the fades) once
    per_window = (len(PRIOR_WEIGHTS) - 1) * ((len(PRIOR_FADES) - 1) * len(PRIOR_STEEPNESS) + 1) + 1
    assert len(prior["mean_ndcg10"]) == per_window * len(PRIOR_WINDOWS)
    assert prior["mean_ndcg10"][prior["key"]] == max(prior["mean_ndcg10"].values())
    assert prior["key"] == (f"{prior['weight']} / {prior['fade']} / {prior['steepness']} / {prior['window'][0]}, "
                            f"{prior['window'][1]}")
    assert result["weights"] == {"plain": 0.0, "full": prior["weight"]}
    assert PRIOR in result["rows"]["new users, n = 1"] and PRIOR not in result["rows"]["short context, n = 1"]
    ablation = result["prior_ablation"]["new users, n = 1"]
    assert ablation["full"]["new_user_prior_weight"] == 0.0 and ablation["plain"]["new_user_prior_weight"] == (
        prior["weight"])
    assert set(result["prior_ablation"]) == {label for label in result["rows"] if label.startswith("new users")}
    assert "| new_user_prior_window (before, after) | best new_user_prior_weight / _fade / _steepness |" in text
    # the selection's score (the model's log-probabilities + w(n) x log prior, counted by the benchmark) ranks as
    # the engine's own does, at any weight, fade and window, when the prior counts the same users
    engine = RecommendationEngine(out / "full_seed0" / "best_model.pt", device="cpu")
    known = load_dataset(synthetic_ml1m_dir, holdout_users=True, holdout_items=True)
    universe = load_dataset(synthetic_ml1m_dir).item_ids[1:-1]
    cases = new_user_cases(known, 1, VALIDATION_REMAINDER)
    assert len(cases.targets) > 0 and all(user is None for user in cases.user_ids)
    engine.new_user_prior_weight = 0.0
    log_p = engine_scores(engine, cases, universe).log_softmax(dim=1)
    engine.new_user_prior_weight, engine.new_user_prior_fade, engine.new_user_prior_window = 3.0, 2.0, (1, 3)
    engine.new_user_prior_steepness = 4.0
    direct = ranks_of(engine_scores(engine, cases, universe), universe, cases)
    log_prior = log_prior_scores(known, prior_counts(known), cases, universe, (1, 3)).float()
    assert torch.equal(ranks_of(log_p + float(faded_weight(3.0, 2.0, 1, 4.0)) * log_prior, universe, cases), direct)
    rating = result["rating"]["full model, seed 0"]
    assert not math.isnan(rating["bias_baseline_rmse"]) or rating["recommended_and_rated_later"] == 0
    # a second call reads the finished runs instead of training again
    mtime = (out / "full_seed0" / "best_model.pt").stat().st_mtime
    assert cold_start_main(["--data_dir", str(synthetic_ml1m_dir), "--out", str(out), "--seeds", "0",
                            "--config", flags, "--max_epochs", "1", "--models", "plain", "full"]) == 0
    assert (out / "full_seed0" / "best_model.pt").stat().st_mtime == mtime
