"""A seeded fuzz of the inference API: thousands of calls of RecommendationEngine's public methods, settings and
constructor with arguments of random types and values (huge, negative and zero integers, NaN and inf, text, bytes,
None, lists, tuples, sets, dicts, generators, numpy scalars and arrays, nested lists), valid ids mixed in.

Each call must either return a well-formed answer (at most k rows ranked 1, 2, ...; movies of the catalogue, never
one of the history when filter_seen; finite scores; predicted ratings in 1..5 and at least min_predicted_rating) or
raise InferenceError (or a subclass) with a one-line message. Any other exception fails the test, naming the call.
"""

import math
import random
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY

import trainer
from data_processor import write_synthetic_ml1m
from inference import InferenceError, RecommendationEngine

SEED = 20261201
CALLS = 6000  # method calls and settings
CONSTRUCTIONS = 60  # RecommendationEngine(...) calls: each valid one loads the model
WILD = 0.12  # share of arguments drawn from wild_values rather than valid ones
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def known_items(engine, user_id: int):
    """A known user's history as item indices (the engine's catalog)."""
    catalog = engine._catalog
    return catalog.history_items[catalog.history(catalog.user_index[user_id])]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A tiny model trained one epoch on synthetic data: (engine, folder for exports). One torch thread: a tiny
    model's matrices gain nothing from two, and on a shared 2-core machine they wait for each other (40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz_api")
    data_dir = write_synthetic_ml1m(root / "ml-1m")
    trainer.train(trainer.parse_args([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(root / "run"),
                                      "--max_epochs", "1"]))
    (root / "exports").mkdir()
    yield RecommendationEngine(root / "run" / "best_model.pt", device="cpu"), root / "exports"
    torch.set_num_threads(threads)


def wild_values(rng: random.Random, engine: RecommendationEngine) -> Any:
    """One value of a random type, not chosen to fit any argument."""
    warm = int(engine._catalog.item_movie_ids[rng.randrange(1, engine.config.num_items + 1)])
    makers = [
        lambda: rng.choice([0, -1, 1, 2, 7, 2**31, 2**63, 2**70, -2**70, 10**6, True, False, None]),
        lambda: rng.choice([1.5, 0.0, -2.5, 4.0, math.nan, math.inf, -math.inf, 1e300, 1e-300]),
        lambda: rng.choice(["", "1", "F", "m", "25-34", "abc\ndef", "x.csv", "é", "1,2", "nan", "inf"]),
        lambda: rng.choice([b"1", b"F", b"x.csv", bytearray(b"2")]),
        lambda: rng.choice([np.int64(3), np.int32(-2), np.uint64(2**64 - 1), np.float32(2.5), np.float64("nan"),
                            np.bool_(True), np.int8(1), np.float16(4)]),
        lambda: rng.choice([np.array([warm, 1]), np.array([[warm]]), np.array([]), np.array([1.5]),
                            np.array([True]), np.array(warm), np.array(["1"])]),
        lambda: rng.choice([[], [warm], [None], [[warm]], [warm, "2"], [1.0], [warm] * 40, [-warm], [2**70]]),
        lambda: rng.choice([(warm,), (), {warm}, frozenset(), {"gender": "F"}, {warm: 1}, {"a": 1}, range(3)]),
        lambda: (movie for movie in [warm, warm]),
        lambda: iter([warm]),
        lambda: rng.choice([object(), Path("x.csv"), Path(""), print, Ellipsis, 3j, slice(1)]),
    ]
    return rng.choice(makers)()


class Draw:
    """Arguments for one call: each a valid value, or (with probability WILD) a wild one."""

    def __init__(self, rng: random.Random, engine: RecommendationEngine, folder: Path) -> None:
        self.rng, self.engine, self.folder = rng, engine, folder
        catalog = engine._catalog
        self.users = engine.user_ids
        self.warm = catalog.item_movie_ids[1:-1].tolist()
        self.cold = catalog.movie_ids[catalog.item_of_movie[catalog.movie_ids] == 0].tolist()

    def pick(self, valid: Any) -> Any:
        return wild_values(self.rng, self.engine) if self.rng.random() < WILD else valid()

    def user_id(self) -> Any:
        return self.pick(lambda: self.rng.choice([*self.users[:10], None, None, 999_999]))

    def history(self) -> list[int]:
        movies = self.rng.sample(self.warm, self.rng.randrange(0, 15))
        if self.cold and self.rng.random() < 0.2:
            movies.insert(self.rng.randrange(len(movies) + 1), self.rng.choice(self.cold))
        return movies

    def item_sequence(self) -> Any:
        def valid() -> Any:
            if self.rng.random() < 0.3:
                return None
            movies = self.history()
            return self.rng.choice([movies, tuple(movies), np.array(movies, dtype=np.int64)])
        return self.pick(valid)

    def timestamps(self, sequence: Any) -> Any:
        def valid() -> Any:
            if sequence is None or isinstance(sequence, (np.ndarray, str, bytes)) or self.rng.random() < 0.6:
                return None
            try:
                return sorted(self.rng.randrange(946_684_800, 1_100_000_000) for _ in sequence)
            except TypeError:
                return None
        return self.pick(valid)

    def k(self) -> Any:
        return self.pick(lambda: self.rng.choice([1, 3, 10, 1000, np.int64(5)]))

    def flag(self) -> Any:
        return self.pick(lambda: self.rng.choice([True, False, np.bool_(True)]))

    def gender(self) -> Any:
        return self.pick(lambda: self.rng.choice([None, None, "F", "M", "f"]))

    def age(self) -> Any:
        return self.pick(lambda: self.rng.choice([None, None, 18, 30, 56, "25-34", np.int64(45)]))

    def occupation(self) -> Any:
        return self.pick(lambda: self.rng.choice([None, None, 0, 7, 20, "programmer", "writer"]))

    def rating(self) -> Any:
        return self.pick(lambda: self.rng.choice([None, None, 1.0, 3.0, 3.5, 4.5, 5, np.float32(2.0)]))

    def movie(self) -> Any:
        return self.pick(lambda: self.rng.choice([*self.rng.sample(self.warm, 3), *self.cold[:1], 999_999_999]))

    def demographics(self) -> Any:
        return self.pick(lambda: None if self.rng.random() < 0.5 else {
            "gender": self.gender(), "age": self.age(), "occupation": self.occupation()})

    def batch(self, row: Any) -> Any:
        return self.pick(lambda: [row() for _ in range(self.rng.randrange(1, 6))])

    def path(self, suffixes: tuple[str, ...]) -> Any:
        return self.pick(lambda: self.folder / f"out{self.rng.randrange(3)}{self.rng.choice(suffixes)}")

    def setting(self, name: str) -> Any:
        valid = {"weight": lambda: self.rng.choice([0, 0.5, 8, 32.0, 1e6, np.float32(2)]),
                 "fade": lambda: self.rng.choice([0.5, 3, 10.0, math.inf, np.int64(2)]),
                 "steepness": lambda: self.rng.choice([0.5, 1, 4.0, 100]),
                 "window": lambda: self.rng.choice([(0, 1), (2, 10), [1, 3], (40, 40), np.array([0, 2])])}
        return self.pick(valid[name])


# ----------------------------------------------------------------------------------------------------------
# What a well-formed answer is


def seen_movies(engine: RecommendationEngine, user_id: Any, sequence: Any) -> set[int]:
    """The movies filter_seen excludes for one (valid) request: the sequence, else a known user's history."""
    if sequence is not None:
        return {int(movie) for movie in sequence}
    if user_id is not None and int(user_id) in engine._catalog.user_index:
        items = known_items(engine, int(user_id))
        return set(engine._catalog.item_movie_ids[items].tolist())
    return set()


def check_records(engine: RecommendationEngine, records: Any, k: Any, seen: set[int] | None,
                  threshold: Any = None) -> None:
    """At most k rows ranked 1.., warm movies once each, none seen (seen None: not filtered), finite scores,
    predicted ratings in 1..5 and >= threshold."""
    assert isinstance(records, list) and len(records) <= int(k)
    movies = [r["movie_id"] for r in records]
    assert [r["rank"] for r in records] == list(range(1, len(records) + 1)) and len(set(movies)) == len(movies)
    assert set(movies) <= set(engine._catalog.item_movie_ids[1:-1].tolist())
    assert seen is None or not seen & set(movies)
    assert all(math.isfinite(r["score"]) for r in records)
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)
    for record in records:
        rating = record.get("predicted_rating")
        assert rating is None or 1.0 <= rating <= 5.0
        assert rating is None or threshold is None or rating >= float(threshold)


def call_get_recommendations(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    sequence = draw.item_sequence()
    kwargs = dict(user_id=draw.user_id(), item_sequence=sequence, k=draw.k(), filter_seen=draw.flag(),
                  timestamps=draw.timestamps(sequence), gender=draw.gender(), age=draw.age(),
                  occupation=draw.occupation(), min_predicted_rating=draw.rating())

    def check(records: Any) -> None:
        seen = seen_movies(engine, kwargs["user_id"], sequence) if kwargs["filter_seen"] else None
        check_records(engine, records, kwargs["k"], seen, kwargs["min_predicted_rating"])
    return "get_recommendations", kwargs, check


def call_recommend_batch(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    user_ids = draw.batch(lambda: draw.rng.choice([*draw.users[:10], None]))
    rows = len(user_ids) if isinstance(user_ids, list) else 1
    sequences = draw.pick(lambda: None if draw.rng.random() < 0.4 else [draw.history() for _ in range(rows)])
    demographics = draw.pick(lambda: None if draw.rng.random() < 0.5 else [
        draw.rng.choice([None, {"gender": "M", "age": 30}, {"occupation": 4}]) for _ in range(rows)])
    kwargs = dict(user_ids=user_ids, item_sequences=sequences, k=draw.k(), filter_seen=draw.flag(),
                  batch_size=draw.pick(lambda: draw.rng.choice([1, 2, 512])), min_predicted_rating=draw.rating(),
                  demographics=demographics)

    def check(answer: Any) -> None:
        assert isinstance(answer, list) and len(answer) == len(user_ids)
        for row, records in enumerate(answer):
            sequence = None if sequences is None else sequences[row]
            seen = seen_movies(engine, user_ids[row], sequence) if kwargs["filter_seen"] else None
            check_records(engine, records, kwargs["k"], seen, kwargs["min_predicted_rating"])
    return "recommend_batch", kwargs, check


def call_score_batch(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    name, kwargs, _ = call_recommend_batch(engine, draw)
    del kwargs["k"], kwargs["min_predicted_rating"]

    def check(answer: Any) -> None:
        scores = answer.scores
        assert tuple(scores.shape) == (len(kwargs["user_ids"]), engine.config.num_items)
        assert not torch.isnan(scores).any() and not torch.isposinf(scores).any()
        assert len(answer.strategies) == len(kwargs["user_ids"])
        if not kwargs["filter_seen"]:
            assert torch.isfinite(scores).all()
    return "score_batch", kwargs, check


def call_explain(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    sequence = draw.item_sequence()
    kwargs = dict(user_id=draw.user_id(), item_sequence=sequence, recommended_item_id=draw.movie(),
                  timestamps=draw.timestamps(sequence), gender=draw.gender(), age=draw.age(),
                  occupation=draw.occupation(), k=draw.k(),
                  plot=None if draw.rng.random() < 0.9 else wild_values(draw.rng, engine))

    def check(explanation: Any) -> None:
        assert explanation["recommended"]["movie_id"] == int(kwargs["recommended_item_id"])
        assert explanation["recommended"]["rank"] >= 1 and math.isfinite(explanation["recommended"]["score"])
        assert all(math.isfinite(d["score_drop"]) for d in explanation["drivers"])
        assert isinstance(explanation["sentence"], str) and "\n" not in explanation["sentence"]
    return "explain_recommendation", kwargs, check


def call_profile(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    kwargs = dict(user_id=draw.user_id())

    def check(profile: Any) -> None:
        assert profile["user_id"] == int(kwargs["user_id"]) and profile["num_ratings"] >= 1
    return "get_user_profile", kwargs, check


def call_cold_items(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    sequence = draw.item_sequence()
    movie_ids = draw.pick(lambda: None if draw.rng.random() < 0.5 else draw.rng.choice(
        [draw.cold[:3], set(draw.cold[-2:]), draw.cold[:1]]))
    kwargs = dict(user_id=draw.user_id(), item_sequence=sequence, k=draw.k(), filter_seen=draw.flag(),
                  movie_ids=movie_ids)

    def check(records: Any) -> None:
        assert isinstance(records, list) and len(records) <= int(kwargs["k"])
        assert {r["movie_id"] for r in records} <= set(draw.cold)
        assert all(r["strategy"] == "genre_similarity" and 0 <= r["score"] <= 1 + 1e-9 for r in records)
        if kwargs["filter_seen"]:
            assert not seen_movies(engine, kwargs["user_id"], sequence) & {r["movie_id"] for r in records}
    return "get_cold_item_recommendations", kwargs, check


def call_export(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    user_ids = draw.pick(lambda: None if draw.rng.random() < 0.3 else draw.rng.sample(draw.users, 3))
    kwargs = dict(path=draw.path((".csv", ".jsonl", ".txt")), user_ids=user_ids, k=draw.k(), filter_seen=draw.flag(),
                  batch_size=draw.pick(lambda: draw.rng.choice([1, 7, 512])), progress=False,
                  min_predicted_rating=draw.rating())

    def check(rows: Any) -> None:
        path = Path(kwargs["path"])
        lines = path.read_text(encoding="utf-8").splitlines()
        assert isinstance(rows, int) and len(lines) == rows + (path.suffix == ".csv")
        assert rows <= int(kwargs["k"]) * len(engine.user_ids if user_ids is None else user_ids)
        assert not list(path.parent.glob(".*.part"))
    return "export_recommendations", kwargs, check


def call_setting(engine: RecommendationEngine, draw: Draw) -> tuple[str, dict, Any]:
    name = draw.rng.choice(["weight", "fade", "steepness", "window"])
    value = draw.setting(name)

    def check(_: Any) -> None:
        kept = getattr(engine, f"new_user_prior_{name}")
        expected = tuple(int(v) for v in value) if name == "window" else float(value)
        assert kept == expected and type(kept) is type(expected)
    return f"new_user_prior_{name}", {"value": value}, check


CALLERS = [call_get_recommendations, call_recommend_batch, call_score_batch, call_explain, call_profile,
           call_cold_items, call_export, call_setting]


def run_call(engine: RecommendationEngine, method: str, kwargs: dict) -> Any:
    if method.startswith("new_user_prior_"):
        return setattr(engine, method, kwargs["value"])
    return getattr(engine, method)(**kwargs)


def test_the_api_answers_or_refuses_every_call(fuzzed):
    engine, folder = fuzzed
    rng = random.Random(SEED)
    draw = Draw(rng, engine, folder)
    failures, outcomes = [], {"answered": 0, "refused": 0}
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # never-rated movies in a history warn; that is an answer, not a failure
        for number in range(CALLS):
            method, kwargs, check = rng.choice(CALLERS)(engine, draw)
            shown = f"#{number} {method}({', '.join(f'{k}={v!r:.60}' for k, v in kwargs.items())})"
            try:
                answer = run_call(engine, method, kwargs)
            except InferenceError as error:
                outcomes["refused"] += 1
                if "\n" in str(error):
                    failures.append(f"{shown}: a message on more than one line: {error!r}")
                continue
            except Exception as error:  # noqa: BLE001 - the point: no other exception may escape
                failures.append(f"{shown}: {error.__class__.__name__}: {error}\n{traceback.format_exc(limit=-3)}")
                continue
            outcomes["answered"] += 1
            try:
                check(answer)
            except AssertionError:
                failures.append(f"{shown}: a malformed answer\n{traceback.format_exc(limit=-2)}")
    seconds = time.monotonic() - started
    print(f"\n{CALLS} calls in {seconds:.1f} s: {outcomes['answered']} answered, {outcomes['refused']} refused")
    assert not failures, f"{len(failures)} of {CALLS} calls failed; the first:\n" + "\n".join(failures[:5])
    assert outcomes["answered"] > CALLS // 5 and outcomes["refused"] > CALLS // 5  # both paths well exercised


def test_the_constructor_answers_or_refuses_every_call(fuzzed):
    engine, _ = fuzzed
    rng = random.Random(SEED + 1)
    model, metadata = engine._inputs["model_path"], engine._inputs["metadata_path"]
    failures, built = [], 0
    for number in range(CONSTRUCTIONS):
        def pick(valid: Any) -> Any:
            return wild_values(rng, engine) if rng.random() < 0.15 else valid

        kwargs = dict(model_path=pick(rng.choice([model, str(model), model.parent])),
                      metadata_path=pick(rng.choice([None, metadata, str(metadata), model])),
                      device=pick("cpu"), default_day_of_year=pick(rng.choice([None, 1, 366])),
                      new_user_prior_weight=pick(32.0), new_user_prior_fade=pick(3.0),
                      new_user_prior_window=pick((0, 1)), new_user_prior_steepness=pick(4.0))
        try:
            RecommendationEngine(**kwargs)
            built += 1
        except InferenceError as error:
            if "\n" in str(error):
                failures.append(f"#{number} {kwargs!r:.300}: a message on more than one line: {error!r}")
        except Exception as error:  # noqa: BLE001
            failures.append(f"#{number} {kwargs!r:.300}: {error.__class__.__name__}: {error}")
    assert not failures, "\n".join(failures[:5])
    assert built >= 5
