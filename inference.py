"""Recommendations, explanations, user profiles and cold start from a trained EnhancedBERT4Rec.

    python inference.py --model_path checkpoints/best_model.pt --metadata_path metadata.json --user_id 123 --k 10

    from inference import RecommendationEngine
    engine = RecommendationEngine(model_path="checkpoints/best_model.pt", metadata_path="metadata.json")
    engine.get_recommendations(user_id=123, item_sequence=[1, 5, 10, 15], k=10, filter_seen=True)
    engine.explain_recommendation(user_id=123, item_sequence=[1, 5, 10, 15], recommended_item_id=42)
    engine.get_user_profile(user_id=123)

The last stage of the pipeline: it reads a trainer.py checkpoint (weights_only) and the metadata.json written
with it (id maps, movies, users with their histories), never the raw files. The rules, in one place:

- Ids in and out are MovieLens MovieIDs and UserIDs, never the model's indices.
- A history is scored exactly as trainer.py scores its test split: its newest seq_length - 1 items,
  left-padded, then [MASK], whose day is that of the newest item. Longer histories keep their newest
  seq_length - 1 items for the model; filter_seen still excludes every item of the history.
- item_sequence omitted: the user's whole known history (everything in the data, so it predicts what comes
  after the test item); filter_seen then excludes all of it.
- Days of year: from `timestamps` when given; otherwise an item the user has rated takes the day of that
  rating, any other item the engine's default_day_of_year (default: today's, UTC).
- Scores are the item head's logits, comparable within one call (higher = better), not probabilities;
  "popularity" answers score by the number of training ratings, "genre_similarity" ones by the similarity below.
- New users ("sequence" and "demographics" rows) with new_user_prior_weight > 0: the score is the model's log
  probability plus w(n) * log of the sign-up prior, what training users rated at the same point of their history.
  A new user with n ratings gets the training ratings at positions n - before .. n + after - 1 of the known users'
  histories (new_user_prior_window = (before, after); training parts only), half from users of the same gender and
  age group, half from all; its weight w(n) = new_user_prior_weight / (1 + (n / fade) ** steepness) halves after
  fade = new_user_prior_fade ratings, as the history comes to say more, and new_user_prior_steepness says how
  sharply (1: weight * fade / (fade + n); large: the full weight up to fade ratings, then next to none). A product
  of experts; all four were chosen on known users playing new users (docs/RESULTS.md). From position 40 on the
  prior is flat and changes nothing. Known users are scored by the model alone.
- Strategy of each answer: "personalized" (known user: identity + demographics + history), "sequence" (new user
  with a history, plus any demographics given), "demographics" (new user with demographics only: the model's
  cold-start path, trained by the trainer's --user_dropout), "popularity" (nothing known: the most-rated movies
  of the training parts, the only statistic used), "genre_similarity" (never-rated movies, below).
  A "sequence" user without demographics reaches the model with every user token unknown, an input training
  never shows (--user_dropout hides only the identity): it works, but is the least tested path.
- Never-rated movies (in movies.dat, not in the model's vocabulary; 177 on ML-1M) have no embedding, so the
  model cannot score them. In a history they are skipped by the model with a ColdItemWarning (their genres
  and year still shape the cold-item profile, and filter_seen excludes them).
  get_cold_item_recommendations ranks them among themselves by 0.8 * cosine(genre multi-hot, the history's
  mean genre multi-hot) + 0.2 * exp(-|year - the history's median year| / 10), a similarity in [0, 1] that is
  not on the model's scale: they are never mixed into the model's ranking.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data_processor import (
    GENRES,
    PAD_INDEX,
    DataError,
    atomic_file,
    day_of_year,
    load_metadata,
    scoring_input,
    training_part,
)
from enhanced_model import (
    USER_TOKENS,
    CheckpointFileError,
    EnhancedBERT4Rec,
    ModelConfig,
    exclude_seen,
    model_from_checkpoint,
    pick_device,
    read_checkpoint,
    score_last_position,
)
from plots import plot_influence

PERSONALIZED, SEQUENCE, DEMOGRAPHICS, POPULARITY, GENRE_SIMILARITY = (
    "personalized", "sequence", "demographics", "popularity", "genre_similarity",
)  # fmt: skip
EXPORT_FORMATS = (".csv", ".jsonl")
EXPORT_COLUMNS = ("user_id", "rank", "movie_id", "title", "score", "predicted_rating", "strategy")
# the engine's defaults, chosen on known users by benchmarks/cold_start.py with the CPU default's models
# (configs/cpu_causal.txt, 2026-11-30; docs/RESULTS.md): the prior's weight at n = 0, the
# number of ratings after which it halves (math.inf: it never fades), how sharply it does, and its window
# (before, after): a new user with n ratings gets the known users' ratings at positions n - before .. n + after - 1
NEW_USER_PRIOR_WEIGHT, NEW_USER_PRIOR_FADE, NEW_USER_PRIOR_STEEPNESS = 32.0, 3.0, 4.0
NEW_USER_PRIOR_WINDOW = (0, 1)
SIGNUP_POSITIONS = 40  # history positions counted for the prior; beyond them it is flat
SIGNUP_FLOOR = 1e-6  # probability of a movie nobody rated at that point, so its log stays finite
COLD_GENRE_WEIGHT, COLD_YEAR_WEIGHT, COLD_YEAR_SCALE = 0.8, 0.2, 10.0
SAME_ERA_YEARS = 3  # release years this close to the history's median read as "the same era"
MIN_DRIVER_DROP = 0.05  # a sentence names a history item only if deleting it costs this much score (~5% odds)
EXPLANATION_MEASURES = {
    "score_drop": "score of the recommended movie (item head; a new user's includes the sign-up prior) minus its "
    "score with that history item deleted (older items slide into the window), or with that user token set to "
    "unknown; one batched forward pass",
    "rank": "1 + the number of unseen movies that score higher",
    "rank_without": "its rank after that deletion or hiding",
    "attention": "last encoder layer, attention of the [MASK] position to that item, mean over heads; "
    "shown beside, not a measure of influence",
    "cross_attention": "weight of each user token in the [MASK] position's cross-attention, mean over heads",
}


# ----------------------------------------------------------------------------------------------------------
# Errors a caller can cause: the CLI turns each into one line on stderr and exit status 1.


class InferenceError(ValueError):
    """Bad input to the engine: the message names the input and the fix."""


class CheckpointError(InferenceError):
    """The checkpoint is missing, corrupt, or not a trainer.py checkpoint."""


class MetadataError(InferenceError):
    """metadata.json is missing, corrupt or incomplete."""


class MetadataMismatchError(InferenceError):
    """metadata.json describes other data than the checkpoint was trained on."""


class UnknownUserError(InferenceError):
    """A UserID that is not in the metadata (and no demographics to treat it as a new user)."""


class UnknownItemError(InferenceError):
    """A MovieID that is not in movies.dat."""


class AlreadySeenError(InferenceError):
    """An explanation asked for a movie of the user's own history."""


class ColdItemError(InferenceError):
    """A never-rated movie where the model must score it (it has no embedding)."""


class ColdItemWarning(UserWarning):
    """Never-rated movies in a history: the model skips them."""


@dataclass
class BatchScores:
    """Scores of many users at once: scores[row, j] is the score of movie movie_ids[j] for user row (seen
    movies -inf when filter_seen). Rows follow the user_ids given; strategies[row] says how they were scored."""

    movie_ids: np.ndarray
    scores: torch.Tensor
    strategies: list[str]


@dataclass
class _Request:
    """One user's input in model indices. items/days: the warm history in time order, all of it."""

    user_index: int
    features: tuple[int, int, int]  # gender, age, occupation index, 0 = unknown
    items: np.ndarray
    days: np.ndarray
    cold_movie_ids: list[int]
    strategy: str


@dataclass
class _ModelInputs:
    item_seq: torch.Tensor
    days: torch.Tensor
    user: dict[str, torch.Tensor]
    seen_offsets: np.ndarray
    seen_items: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# The engine


class RecommendationEngine:
    """Top-k recommendations, explanations, user profiles and cold start from a checkpoint + metadata.json.

    model_path: a checkpoint written by trainer.py (loaded with weights_only=True).
    metadata_path: the metadata.json written for the same data (its fingerprint must match the checkpoint's);
        None: the metadata.json beside the checkpoint, where trainer.py writes it by default.
    device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
    default_day_of_year: day (1..366) given to history items without a timestamp or a known rating day;
        None = today's (UTC) at each call.
    new_user_prior_weight: weight (>= 0) of the sign-up prior in new users' scores at n = 0 (module docstring);
        0 scores them by the model alone. new_user_prior_fade (> 0, may be math.inf): the number of ratings after
        which that weight halves; new_user_prior_steepness (> 0) how sharply. new_user_prior_window (before >= 0,
        after >= 1): a user with n ratings gets the known users' ratings at positions n - before .. n + after - 1.
        All four are attributes of the same names; set them to change them later.
    Raises CheckpointError, MetadataError, MetadataMismatchError or InferenceError (all ValueError).

    get_recommendations (one user), score_batch / recommend_batch (many users, vectorised),
    explain_recommendation, get_user_profile, get_cold_item_recommendations; user_ids lists the known users.
    The model (`model`, in eval mode on `device`) and its `config` are attributes.
    """

    def __init__(
        self,
        model_path: str | Path,
        metadata_path: str | Path | None = None,
        device: str = "auto",
        default_day_of_year: int | None = None,
        new_user_prior_weight: float = NEW_USER_PRIOR_WEIGHT,
        new_user_prior_fade: float = NEW_USER_PRIOR_FADE,
        new_user_prior_window: tuple[int, int] = NEW_USER_PRIOR_WINDOW,
        new_user_prior_steepness: float = NEW_USER_PRIOR_STEEPNESS,
    ) -> None:
        self.new_user_prior_weight = new_user_prior_weight
        self.new_user_prior_fade = new_user_prior_fade
        self.new_user_prior_steepness = new_user_prior_steepness
        self.new_user_prior_window = new_user_prior_window
        if default_day_of_year is not None and not 1 <= _as_int(default_day_of_year, "default_day_of_year") <= 366:
            raise InferenceError(f"default_day_of_year must be in 1..366, got {default_day_of_year}")
        self.default_day_of_year = default_day_of_year
        self.device = _device(device)
        checkpoint = _read_checkpoint(model_path)
        if metadata_path is None:
            metadata_path = Path(model_path).parent / "metadata.json"
        metadata = _read_metadata(metadata_path)
        self.model = _build_model(checkpoint, model_path).to(self.device).eval()
        self.config: ModelConfig = self.model.config
        _check_same_data(checkpoint, metadata, self.config, model_path, metadata_path)
        try:
            self._index_metadata(metadata)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise MetadataError(
                f"metadata {metadata_path} is incomplete ({error.__class__.__name__}: {error}); "
                "rewrite it with data_processor.py"
            ) from None

    def _index_metadata(self, metadata: dict[str, Any]) -> None:
        """Arrays for vectorised look-ups: movies, items, users, histories (CSR), popularity."""
        self._vocabularies = metadata["vocabularies"]
        self._movies = metadata["movies"]
        movie_ids = np.array(sorted(self._movies), dtype=np.int64)
        self._movie_row = np.full(int(movie_ids.max()) + 1, -1, dtype=np.int64)
        self._movie_row[movie_ids] = np.arange(len(movie_ids))
        self._movie_ids = movie_ids
        self._movie_genres = np.zeros((len(movie_ids), len(GENRES)), dtype=np.float32)
        for row, movie_id in enumerate(movie_ids.tolist()):
            self._movie_genres[row, [GENRES.index(genre) for genre in self._movies[movie_id]["genres"]]] = 1.0
        self._movie_years = np.array(
            [np.nan if self._movies[m]["year"] is None else self._movies[m]["year"] for m in movie_ids.tolist()]
        )
        self._item_movie_ids = np.array([-1 if m is None else m for m in metadata["movie_id_by_item_index"]])
        self._item_of_movie = np.zeros(len(self._movie_row), dtype=np.int64)  # 0: never rated (or unknown)
        self._item_of_movie[self._item_movie_ids[1:-1]] = np.arange(1, self.config.num_items + 1)
        self._item_movie_rows = self._movie_row[self._item_movie_ids[1:-1]]

        self._users = metadata["users"]
        self._user_index = metadata["user_index_by_user_id"]
        user_ids = metadata["user_id_by_user_index"]
        self._user_features = np.zeros((len(user_ids), 3), dtype=np.int64)
        histories = [{"items": [], "days": []}] + [self._users[u]["history"] for u in user_ids[1:]]
        for index, user_id in enumerate(user_ids[1:], start=1):
            user = self._users[user_id]
            self._user_features[index] = (user["gender_index"], user["age_index"], user["occupation_index"])
        lengths = np.array([len(history["items"]) for history in histories])
        self._history_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._history_items = np.array([i for h in histories for i in h["items"]], dtype=np.int64)
        self._history_days = np.array([d for h in histories for d in h["days"]], dtype=np.int64)
        # (user, item) -> day of that rating, by binary search over user * vocabulary + item
        event_users = np.repeat(np.arange(len(lengths)), lengths)
        keys = event_users * self.config.item_vocab_size + self._history_items
        order = np.argsort(keys, kind="stable")
        self._event_keys, self._event_days = keys[order], self._history_days[order]
        # popularity over the training parts only (EVALUATION.md)
        self._popularity = np.bincount(
            self._history_items[training_part(self._history_offsets)], minlength=self.config.item_vocab_size
        ).astype(np.float32)
        self._popularity[[PAD_INDEX, self.config.mask_index]] = -np.inf
        self._signup = signup_counts(self._history_offsets, self._history_items, self._user_features,
                                     (self.config.num_genders, self.config.num_ages, self.config.item_vocab_size))
        training_counts = self._popularity[1:-1]
        self._training_genre_mix = training_counts @ self._movie_genres[self._item_movie_rows] / training_counts.sum()

    # ------------------------------------------------------------------------------------------------------
    # Public API

    @property
    def new_user_prior_weight(self) -> float:
        """Weight of the sign-up prior in new users' scores (0: the model alone)."""
        return self._new_user_prior_weight

    @new_user_prior_weight.setter
    def new_user_prior_weight(self, weight: float) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            raise InferenceError(f"new_user_prior_weight must be a finite number >= 0 (0: no prior), got {weight!r}")
        self._new_user_prior_weight = float(weight)

    @property
    def new_user_prior_fade(self) -> float:
        """Number of ratings after which the sign-up prior's weight halves (math.inf: never)."""
        return self._new_user_prior_fade

    @new_user_prior_fade.setter
    def new_user_prior_fade(self, fade: float) -> None:
        if isinstance(fade, bool) or not isinstance(fade, int | float) or not fade > 0:
            raise InferenceError(f"new_user_prior_fade must be a number > 0 (math.inf: no fading), got {fade!r}")
        self._new_user_prior_fade = float(fade)

    @property
    def new_user_prior_steepness(self) -> float:
        """How sharply the sign-up prior's weight falls around new_user_prior_fade ratings (1: fade / (fade + n))."""
        return self._new_user_prior_steepness

    @new_user_prior_steepness.setter
    def new_user_prior_steepness(self, steepness: float) -> None:
        if isinstance(steepness, bool) or not isinstance(steepness, int | float) or not 0 < steepness < math.inf:
            raise InferenceError(f"new_user_prior_steepness must be a finite number > 0 (1: the weight falls as "
                                 f"fade / (fade + n)), got {steepness!r}")
        self._new_user_prior_steepness = float(steepness)

    @property
    def new_user_prior_window(self) -> tuple[int, int]:
        """(before, after): a new user with n ratings gets the known users' ratings at positions
        n - before .. n + after - 1 in the sign-up prior."""
        return self._new_user_prior_window

    @new_user_prior_window.setter
    def new_user_prior_window(self, window: tuple[int, int]) -> None:
        if (not isinstance(window, tuple | list) or len(window) != 2
                or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in window)
                or window[0] < 0 or window[1] < 1):
            raise InferenceError("new_user_prior_window must be two whole numbers (before >= 0, after >= 1), "
                                 f"e.g. (2, 10), got {window!r}")
        self._new_user_prior_window = (int(window[0]), int(window[1]))

    @property
    def user_ids(self) -> list[int]:
        """The known UserIDs, ascending."""
        return sorted(self._user_index)

    def get_recommendations(
        self,
        user_id: int | None = None,
        item_sequence: Sequence[int] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        *,
        timestamps: Sequence[int] | None = None,
        gender: str | None = None,
        age: int | str | None = None,
        occupation: int | str | None = None,
        min_predicted_rating: float | None = None,
    ) -> list[dict[str, Any]]:
        """The k best movies for one user, best first.

        user_id: a UserID of the metadata, or None for a new user. An unknown UserID is an error unless
            demographics are given (then it is served as a new user).
        item_sequence: MovieIDs in time order; None = the user's whole known history.
        filter_seen: exclude the sequence's movies (the whole known history when item_sequence is None).
        timestamps: Unix seconds of the sequence's items (for their day of year).
        gender ("F"/"M"), age (years or an ML-1M age group label such as "25-34"), occupation (ML-1M code
            0..20 or its name): a new user's demographics, or overrides of a known user's.
        min_predicted_rating: leave out movies whose predicted rating (rating head, 1-5) is below this; the list
            stays k long while enough movies remain (needs a checkpoint with a rating head).
        Returns one dict per movie: rank, movie_id, title, genres, year, score, strategy (module docstring) and,
        with a rating head, predicted_rating.
        """
        k, filter_seen = _positive_int(k, "k"), _as_bool(filter_seen, "filter_seen")
        threshold = self._rating_threshold(min_predicted_rating)
        request = self._resolve(user_id, item_sequence, timestamps, gender, age, occupation)
        _warn_cold([request])
        return self._top_k(*self._score_and_hidden([request], filter_seen), k, [request], threshold)[0]

    def score_batch(
        self,
        user_ids: Sequence[int | None],
        item_sequences: Sequence[Sequence[int] | None] | None = None,
        timestamps: Sequence[Sequence[int] | None] | None = None,
        filter_seen: bool = True,
        batch_size: int = 512,
        demographics: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> BatchScores:
        """Scores of every movie for many users, batch_size users per forward pass (offline use).

        Each row follows get_recommendations' rules for (user_ids[i], item_sequences[i], timestamps[i],
        **demographics[i]); item_sequences None = every user's known history; demographics[i] is None or a dict
        with any of gender, age, occupation (a new user's, or overrides of a known user's).
        """
        requests = self._resolve_batch(user_ids, item_sequences, timestamps, demographics)
        scores = self._score(requests, _as_bool(filter_seen, "filter_seen"), _positive_int(batch_size, "batch_size"))
        return BatchScores(self._item_movie_ids[1:-1], scores[:, 1:-1], [r.strategy for r in requests])

    def recommend_batch(
        self,
        user_ids: Sequence[int | None],
        item_sequences: Sequence[Sequence[int] | None] | None = None,
        timestamps: Sequence[Sequence[int] | None] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        batch_size: int = 512,
        min_predicted_rating: float | None = None,
        demographics: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """get_recommendations for many users at once (see score_batch); one list per user, in order."""
        k = _positive_int(k, "k")
        threshold = self._rating_threshold(min_predicted_rating)
        requests = self._resolve_batch(user_ids, item_sequences, timestamps, demographics)
        scores, hidden = self._score_and_hidden(requests, _as_bool(filter_seen, "filter_seen"),
                                                _positive_int(batch_size, "batch_size"))
        return self._top_k(scores, hidden, k, requests, threshold)

    def export_recommendations(
        self,
        path: str | Path,
        user_ids: Sequence[int] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        batch_size: int = 512,
        progress: bool = True,
    ) -> int:
        """Write the top k of many users (default: every known user, from their whole history) to `path`: CSV for
        a .csv name, JSON Lines for .jsonl, one row per (user, rank) with user_id, rank, movie_id, title, score,
        predicted_rating (empty/null without a rating head) and strategy. Streamed batch_size users at a time
        with a progress bar, into a temporary file renamed into place at the end (nothing half-written stays).
        Returns the number of rows written."""
        path = Path(path)
        if path.suffix.lower() not in EXPORT_FORMATS:
            raise InferenceError(f"output {path} must end in .csv or .jsonl (the format follows the extension)")
        if not path.parent.is_dir():
            raise InferenceError(f"output folder {path.parent} does not exist: create it or pick another path")
        user_ids = self.user_ids if user_ids is None else [_as_int(u, "user_ids") for u in _rows(user_ids, "user_ids")]
        k, batch_size = _positive_int(k, "k"), _positive_int(batch_size, "batch_size")
        filter_seen, progress = _as_bool(filter_seen, "filter_seen"), _as_bool(progress, "progress")
        rows = 0
        with atomic_file(path) as handle, \
                tqdm(total=len(user_ids), desc="users", unit="user", disable=not progress) as bar:
            file = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            write = _row_writer(file, path.suffix.lower())
            for start in range(0, len(user_ids), batch_size):
                chunk = user_ids[start : start + batch_size]
                for user_id, records in zip(chunk, self.recommend_batch(chunk, k=k, filter_seen=filter_seen,
                                                                        batch_size=batch_size), strict=True):
                    for record in records:
                        write({"user_id": user_id, **{name: record.get(name) for name in EXPORT_COLUMNS[1:]}})
                    rows += len(records)
                bar.update(len(chunk))
            file.flush()
            file.detach()  # the handle is atomic_file's to close and rename
        return rows

    def explain_recommendation(
        self,
        user_id: int | None,
        item_sequence: Sequence[int] | None,
        recommended_item_id: int,
        *,
        timestamps: Sequence[int] | None = None,
        gender: str | None = None,
        age: int | str | None = None,
        occupation: int | str | None = None,
        plot: str | Path | None = None,
        k: int = 10,
    ) -> dict[str, Any]:
        """Why recommended_item_id (a MovieID) is recommended to this user (arguments as get_recommendations).

        plot: a .png path for a bar chart of the drivers' score drops (plots.plot_influence; needs matplotlib).
        k: the length of the list the user sees: a movie ranked below it is described by its rank ("ranked 299th
            for you"), not as a recommendation. A movie of the history itself is refused (AlreadySeenError).

        Returns a dict: "recommended" (the movie, its score and rank with seen movies excluded); "drivers" (the
        history items the model read, most influential first: score_drop when the item is deleted, rank_without,
        and attention shown beside); "shared_genres" (genre -> number of those items that have it);
        "release_year" (its year against the items' median); "user_tokens" (per identity/gender/age/occupation
        token: cross_attention weight at the [MASK] position and score_drop when hidden); "measures" (what
        each number means); "sentence" (one plain-language sentence); "strategy".
        """
        k = _positive_int(k, "k")
        request = self._resolve(user_id, item_sequence, timestamps, gender, age, occupation)
        _warn_cold([request])
        item = self._warm_item(recommended_item_id)
        if item in request.items:
            raise AlreadySeenError(f"movie {recommended_item_id} is already in this user's history, so it is never "
                                   "recommended to them: explain a movie outside the history")
        if request.strategy == POPULARITY:
            scores = self._score([request], False)
            movie = self._movie(int(self._item_movie_ids[item]))
            return _popularity_explanation(movie, int(self._popularity[item]), _ranks(scores, scores[:, item])[0])
        window_size = min(len(request.items), self.config.seq_length - 1)
        token_names = self._known_tokens(request)
        variants = [request, *_deletions(request, window_size), *(_hide_token(request, name) for name in token_names)]
        scores = self._score(variants, False)
        target_scores = scores[:, item].clone()
        self._exclude(scores, [request] * len(scores))
        ranks = _ranks(scores, target_scores)
        drops = (target_scores[0] - target_scores[1:]).tolist()
        self_attention, cross_attention = self._attention(request, window_size)

        window_movie_ids = self._item_movie_ids[request.items[len(request.items) - window_size :]].tolist()
        window_movies = [self._movie(movie_id) for movie_id in window_movie_ids]
        window_rows, row = self._movie_row[window_movie_ids], self._movie_row[recommended_item_id]
        explanation = {
            "user_id": user_id,
            "strategy": request.strategy,
            "recommended": {**self._movie(recommended_item_id), "score": target_scores[0].item(), "rank": ranks[0]},
            "drivers": _drivers(window_movies, drops[:window_size], ranks[1 : 1 + window_size], self_attention),
            "shared_genres": _shared_genres(self._movie_genres[row], self._movie_genres[window_rows]),
            "release_year": _year_relation(self._movies[recommended_item_id]["year"], self._movie_years[window_rows]),
            "user_tokens": _user_tokens(token_names, cross_attention, drops[window_size:], ranks[1 + window_size :]),
            "measures": dict(EXPLANATION_MEASURES),
        }
        explanation["sentence"] = _sentence(explanation, window_size, k)
        if plot is not None:
            explanation["plot"] = None if plot_influence(explanation, plot) is None else str(plot)
        return explanation

    def get_user_profile(self, user_id: int) -> dict[str, Any]:
        """A known user's demographics and history summary.

        Returns user_id, gender ("F"/"M"), age (ML-1M age code), age_group (e.g. "25-34"), occupation_code
        (0..20), occupation (its name), num_ratings, mean_rating, top_genres (up to 5 genres with their share
        of the history's genre labels), predicted_top_genres (with a preference head: the 5 largest shares of the
        genre mix it predicts from the newest seq_length - 1 movies, beside the history's own mix) and
        recent_movies (the 5 newest, newest first).
        """
        user_id = _as_int(user_id, "user_id")
        if user_id not in self._user_index:
            raise UnknownUserError(f"unknown user_id {user_id}: not in the metadata's users")
        user = self._users[user_id]
        history = user["history"]
        genre_counts = self._movie_genres[self._item_movie_rows[np.array(history["items"]) - 1]].sum(axis=0)
        shares = genre_counts / max(genre_counts.sum(), 1.0)
        top = [int(g) for g in np.argsort(-shares, kind="stable")[:5] if shares[g] > 0]
        return {
            "user_id": user_id,
            "gender": user["gender"],
            "age": user["age"],
            "age_group": user["age_group"],
            "occupation_code": user["occupation_code"],
            "occupation": user["occupation"],
            "num_ratings": len(history["items"]),
            "mean_rating": round(float(np.mean(history["ratings"])), 3),
            "top_genres": [{"genre": GENRES[g], "share": round(float(shares[g]), 3)} for g in top],
            **self._predicted_genre_mix(user_id),
            "recent_movies": [
                {"movie_id": movie_id, "title": self._movies[movie_id]["title"]}
                for movie_id in self._item_movie_ids[history["items"][::-1][:5]].tolist()
            ],
        }

    @torch.no_grad()
    def _predicted_genre_mix(self, user_id: int) -> dict[str, Any]:
        """{"predicted_top_genres": up to 5 genres of the preference head's genre mix for the user's known
        history (the newest seq_length - 1 movies read as at inference)}; {} without that head."""
        if self.model.preference_head is None:
            return {}
        request = self._resolve(user_id, None, None)
        inputs = self._model_inputs([request])
        hidden = self.model(inputs.item_seq, inputs.days, **inputs.user).hidden
        mix = self.model.predict_preference(hidden, inputs.item_seq).float().softmax(dim=-1)[0].cpu().numpy()
        top = np.argsort(-mix, kind="stable")[:5]
        return {"predicted_top_genres": [{"genre": GENRES[g], "share": round(float(mix[g]), 3)} for g in top]}

    def get_cold_item_recommendations(
        self,
        user_id: int | None = None,
        item_sequence: Sequence[int] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        movie_ids: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """The k never-rated movies closest to the history's genres and era (strategy "genre_similarity").

        score = 0.8 * cosine(the movie's genre multi-hot, the history's mean genre multi-hot)
              + 0.2 * exp(-|release year - the history's median year| / 10)   (0 without a year)
        The history is item_sequence (cold items included) or the user's known history; an empty one uses
        the genre mix of all training ratings and no year term. The score ranks cold movies among themselves
        only: it is not on the model's scale. Each record adds genre_similarity, year_proximity, matched_genres.
        movie_ids: rank only these MovieIDs (each must be a movie the model has no embedding for).
        """
        k, filter_seen = _positive_int(k, "k"), _as_bool(filter_seen, "filter_seen")
        request = self._resolve(user_id, item_sequence, None, None, None, None)
        history_rows = np.concatenate([
            self._item_movie_rows[request.items - 1],
            self._movie_row[np.array(request.cold_movie_ids, dtype=np.int64)],
        ])
        profile = self._movie_genres[history_rows].mean(axis=0) if len(history_rows) else self._training_genre_mix
        years = self._movie_years[history_rows]
        reference_year = np.nanmedian(years) if np.isfinite(years).any() else np.nan
        cold_rows = np.flatnonzero(self._item_of_movie[self._movie_ids] == PAD_INDEX)
        if movie_ids is not None:
            cold_rows = self._candidate_rows(_as_id_array(movie_ids, "movie_ids"), cold_rows)
        if filter_seen:
            cold_rows = np.setdiff1d(cold_rows, history_rows)
        genres = self._movie_genres[cold_rows]
        norms = np.linalg.norm(genres, axis=1) * np.linalg.norm(profile)
        similarity = genres @ profile / np.maximum(norms, 1e-12)
        proximity = np.nan_to_num(np.exp(-np.abs(self._movie_years[cold_rows] - reference_year) / COLD_YEAR_SCALE))
        scores = COLD_GENRE_WEIGHT * similarity + COLD_YEAR_WEIGHT * proximity
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            {
                "rank": rank,
                **self._movie(int(self._movie_ids[cold_rows[i]])),
                "score": float(scores[i]),
                "strategy": GENRE_SIMILARITY,
                "genre_similarity": float(similarity[i]),
                "year_proximity": float(proximity[i]),
                "matched_genres": [GENRES[g] for g in np.flatnonzero(genres[i] * profile)],
            }
            for rank, i in enumerate(order.tolist(), start=1)
        ]

    def _candidate_rows(self, movie_ids: np.ndarray, cold_rows: np.ndarray) -> np.ndarray:
        """Rows (of the movie table) of movie_ids, all of them never-rated movies, in cold_rows' order."""
        unknown = [m for m in movie_ids.tolist() if m not in self._movies]
        if unknown:
            raise UnknownItemError(f"movie_ids: unknown MovieID(s) {unknown[:10]}: not in the metadata's movies")
        rows = self._movie_row[movie_ids]
        warm = movie_ids[~np.isin(rows, cold_rows)].tolist()
        if warm:
            raise InferenceError(f"movie_ids: MovieID(s) {warm[:10]} have an embedding: get_recommendations ranks them")
        return cold_rows[np.isin(cold_rows, rows)]

    # ------------------------------------------------------------------------------------------------------
    # Resolving a request: ids -> model indices, strategy

    def _resolve(
        self,
        user_id: int | None,
        item_sequence: Sequence[int] | None,
        timestamps: Sequence[int] | None,
        gender: str | None = None,
        age: int | str | None = None,
        occupation: int | str | None = None,
    ) -> _Request:
        demographics = self._demographics(gender, age, occupation)
        user_index = self._user_index_of(user_id, any(demographics))
        known = self._user_features[user_index]
        features = tuple(int(given or stored) for given, stored in zip(demographics, known, strict=True))
        cold_movie_ids: list[int] = []
        if item_sequence is None:
            if timestamps is not None:
                raise InferenceError("timestamps describe item_sequence: pass both, or neither")
            start, stop = self._history_offsets[user_index], self._history_offsets[user_index + 1]
            items, days = self._history_items[start:stop], self._history_days[start:stop]
        else:
            movie_ids = _as_id_array(item_sequence, "item_sequence")
            items = self._items_of(movie_ids)
            if timestamps is None:
                days = self._known_days(user_index, items)
            else:
                days = day_of_year(_as_id_array(timestamps, "timestamps"))
                if len(days) != len(items):
                    raise InferenceError(f"timestamps has {len(days)} values for {len(items)} items in item_sequence")
            cold_movie_ids = movie_ids[items == PAD_INDEX].tolist()
            items, days = items[items != PAD_INDEX], days[items != PAD_INDEX]
        if user_index:
            strategy = PERSONALIZED
        elif len(items):
            strategy = SEQUENCE
        else:  # a model without user tokens cannot read demographics
            strategy = DEMOGRAPHICS if any(features) and self.config.use_user_tokens else POPULARITY
        return _Request(user_index, features, items, days, cold_movie_ids, strategy)

    def _resolve_batch(
        self,
        user_ids: Sequence[int | None],
        item_sequences: Sequence[Sequence[int] | None] | None,
        timestamps: Sequence[Sequence[int] | None] | None,
        demographics: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[_Request]:
        user_ids = _rows(user_ids, "user_ids")
        if item_sequences is not None and len(_rows(item_sequences, "item_sequences")) != len(user_ids):
            raise InferenceError(f"item_sequences has {len(item_sequences)} rows for {len(user_ids)} user_ids")
        if timestamps is not None and (item_sequences is None or len(timestamps) != len(user_ids)):
            raise InferenceError("timestamps need item_sequences, one row per user")
        if demographics is not None and len(demographics) != len(user_ids):
            raise InferenceError(f"demographics has {len(demographics)} rows for {len(user_ids)} user_ids")
        requests = [
            self._resolve(
                user_id,
                None if item_sequences is None else item_sequences[row],
                None if timestamps is None else timestamps[row],
                **_demographic_fields(None if demographics is None else demographics[row], row),
            )
            for row, user_id in enumerate(user_ids)
        ]
        _warn_cold(requests)
        return requests

    def _user_index_of(self, user_id: int | None, has_demographics: bool) -> int:
        if user_id is None:
            return 0
        user_id = _as_int(user_id, "user_id")
        if user_id in self._user_index:
            return self._user_index[user_id]
        if has_demographics:
            return 0  # a new user described by their demographics
        raise UnknownUserError(
            f"unknown user_id {user_id}: not in the metadata's users; for a new user pass gender/age/occupation "
            "or an item_sequence without a user_id"
        )

    def _demographics(
        self, gender: str | None, age: int | str | None, occupation: int | str | None
    ) -> tuple[int, int, int]:
        """Model indices (0 = not given) of a new user's demographics, via the metadata's vocabularies."""
        genders = self._vocabularies["genders"]
        age_groups = self._vocabularies["age_groups"]
        occupations = self._vocabularies["occupations"]
        gender_index = age_index = occupation_index = 0
        if gender is not None:
            if str(gender).upper() not in genders[1:]:
                raise InferenceError(f"gender must be one of {', '.join(genders[1:])}, got {gender!r}")
            gender_index = genders.index(str(gender).upper())
        if age is not None:
            labels = [group["label"] for group in age_groups]
            if isinstance(age, str) and age in labels[1:]:
                age_index = labels.index(age)
            else:
                years = _as_int(age, "age (years, or an age group such as '25-34')")
                if not 1 <= years <= 120:
                    raise InferenceError(f"age must be 1..120 years, got {years}")
                # ML-1M's age codes are each group's lower bound: the group is the last code <= the age
                age_index = max((i for i, group in enumerate(age_groups[1:], 1) if group["age"] <= years), default=1)
        if occupation is not None:
            names = [entry["name"] for entry in occupations]
            if isinstance(occupation, str) and occupation in names[1:]:
                occupation_index = names.index(occupation)
            else:
                code = _as_int(occupation, "occupation (ML-1M code or name)")
                codes = [entry["code"] for entry in occupations]
                if code not in codes[1:]:
                    raise InferenceError(f"occupation must be an ML-1M code 0..{len(codes) - 2}, got {code}")
                occupation_index = codes.index(code)
        return gender_index, age_index, occupation_index

    def _items_of(self, movie_ids: np.ndarray) -> np.ndarray:
        """Item indices of MovieIDs (0 for never-rated movies); unknown MovieIDs are an error."""
        in_range = (movie_ids >= 0) & (movie_ids < len(self._movie_row))
        known = np.zeros(len(movie_ids), dtype=bool)
        known[in_range] = self._movie_row[movie_ids[in_range]] >= 0
        if not known.all():
            unknown = sorted(set(movie_ids[~known].tolist()))
            raise UnknownItemError(f"unknown MovieID(s) {unknown[:10]}: not in movies.dat")
        return self._item_of_movie[movie_ids]

    def _warm_item(self, movie_id: int) -> int:
        """Item index of a MovieID the model can score."""
        item = int(self._items_of(_as_id_array([movie_id], "recommended_item_id"))[0])
        if item == PAD_INDEX:
            raise ColdItemError(
                f"movie {movie_id} was never rated in the training data, so the model cannot score it; "
                "get_cold_item_recommendations ranks such movies by genre similarity"
            )
        return item

    def _known_days(self, user_index: int, items: np.ndarray) -> np.ndarray:
        """Day the user rated each item, else the default day (today's unless the engine was given one)."""
        keys = user_index * self.config.item_vocab_size + items
        found = np.minimum(np.searchsorted(self._event_keys, keys), len(self._event_keys) - 1)
        rated = (self._event_keys[found] == keys) & (user_index > 0) & (items != PAD_INDEX)
        return np.where(rated, self._event_days[found], self._default_day())

    def _default_day(self) -> int:
        if self.default_day_of_year is not None:
            return self.default_day_of_year
        return int(day_of_year(np.array([int(time.time())]))[0])

    # ------------------------------------------------------------------------------------------------------
    # Scoring: the trainer's input layout and scoring function

    def _model_inputs(self, requests: list[_Request]) -> _ModelInputs:
        """data_processor.scoring_input's layout: the newest seq_length - 1 items + [MASK] with the newest day."""
        lengths = np.array([len(r.items) for r in requests], dtype=np.int64)
        ends = np.cumsum(lengths)
        items = np.concatenate([np.zeros(0, np.int64), *(r.items for r in requests)]).astype(np.int64)
        days = np.concatenate([np.zeros(0, np.int64), *(r.days for r in requests)]).astype(np.int64)
        item_seq, day_seq = scoring_input(items, days, ends - lengths, ends, self.config.seq_length,
                                          self.config.mask_index, empty_day=self._default_day())
        features = np.array([(r.user_index, *r.features) for r in requests], dtype=np.int64)
        feature_columns = torch.from_numpy(features).T.to(self.device)
        user = dict(zip(("user_idx", "gender", "age", "occupation"), feature_columns, strict=True))
        return _ModelInputs(
            torch.from_numpy(item_seq).to(self.device),
            torch.from_numpy(day_seq).to(self.device),
            user,
            np.concatenate([[0], ends]),
            items,
        )

    def _score(self, requests: list[_Request], filter_seen: bool, batch_size: int = 512) -> torch.Tensor:
        """(len(requests), num_items + 2) scores on the CPU; popularity rows get training-part counts."""
        return self._score_and_hidden(requests, filter_seen, batch_size)[0]

    def _score_and_hidden(
        self, requests: list[_Request], filter_seen: bool, batch_size: int = 512
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """_score's scores and the hidden row each was read from (B, hidden; readout_rows), on the CPU; popularity
        rows are not read by the model, so their hidden rows are NaN."""
        chunks, hidden_rows = [], []
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            popular = [row for row, r in enumerate(batch) if r.strategy == POPULARITY]
            if len(popular) == len(batch):
                chunks.append(torch.from_numpy(self._popularity).expand(len(batch), -1).clone())
                hidden_rows.append(torch.full((len(batch), self.config.hidden_size), math.nan))
                continue
            inputs = self._model_inputs(batch)
            scores, hidden, _ = score_last_position(self.model, inputs.item_seq, inputs.days, inputs.user)
            # by strategy, not user_index: a known user whose identity an explanation hides stays "personalized"
            new_users = [row for row, r in enumerate(batch) if r.strategy in (SEQUENCE, DEMOGRAPHICS)]
            if new_users and self.new_user_prior_weight:
                rows = torch.tensor(new_users, device=scores.device)
                prior = self._signup_log_prior([batch[row] for row in new_users]).to(scores.device, scores.dtype)
                scores[rows] = scores[rows].log_softmax(dim=-1) + prior
            if filter_seen:
                exclude_seen(scores, inputs.seen_offsets, inputs.seen_items)
            scores, hidden = scores.cpu(), hidden.float().cpu()
            scores[popular] = torch.from_numpy(self._popularity)
            hidden[popular] = math.nan
            chunks.append(scores)
            hidden_rows.append(hidden)
        return torch.cat(chunks), torch.cat(hidden_rows)

    def _signup_log_prior(self, requests: list[_Request]) -> torch.Tensor:
        """(len(requests), vocabulary) w(n) * log of the sign-up prior of each new user (module docstring)."""
        n = np.array([len(r.items) for r in requests])
        weight = faded_weight(self.new_user_prior_weight, self.new_user_prior_fade, n, self.new_user_prior_steepness)
        gender, age = (np.array([r.features[column] for r in requests]) for column in (0, 1))
        prior = signup_window_prior(self._signup, n, gender, age, self.new_user_prior_window)
        return torch.from_numpy(weight[:, None] * np.log(prior))

    @torch.no_grad()
    def _predicted_ratings(self, hidden: torch.Tensor, items: torch.Tensor, user_index: torch.Tensor) -> np.ndarray:
        """Rating head's 1-5 prediction (B, k) of items (B, k) from each row's [MASK] hidden state (B, H); NaN for
        rows without one (popularity). The whole array is NaN when the checkpoint has no rating head."""
        if self.model.rating_head is None:
            return np.full(tuple(items.shape), np.nan)
        k = items.size(1)
        rows = hidden.repeat_interleave(k, dim=0).to(self.device)
        users = user_index.repeat_interleave(k).to(self.device)
        predicted = self.model.predict_rating(rows, items.reshape(-1).to(self.device), users).float().cpu()
        return predicted.reshape(items.shape).numpy()

    def _exclude(self, scores: torch.Tensor, requests: list[_Request]) -> None:
        lengths = [len(r.items) for r in requests]
        exclude_seen(scores, np.concatenate([[0], np.cumsum(lengths)]), np.concatenate([r.items for r in requests]))

    def _top_k(self, scores: torch.Tensor, hidden: torch.Tensor, k: int, requests: list[_Request],
               min_rating: float | None = None) -> list[list[dict[str, Any]]]:
        """Best-first records per row; with a rating head each carries predicted_rating (1-5, None where the
        model did not read the row). min_rating drops movies predicted below it: the candidates widen (k, 4k,
        16k, ... movies by score) until k remain or every movie was looked at."""
        user_index = torch.tensor([r.user_index for r in requests], dtype=torch.long)
        width = k
        while True:
            values, items = scores.topk(min(width, scores.size(1)), dim=1)
            ratings = self._predicted_ratings(hidden, items, user_index)
            keep = values > -torch.inf
            if min_rating is not None:
                keep &= torch.from_numpy(~(ratings < min_rating))  # NaN (popularity rows) is kept
            if min_rating is None or width >= scores.size(1) or bool((keep.sum(dim=1) >= k).all()):
                break
            width *= 4
        movie_ids = self._item_movie_ids[items.numpy()]
        with_rating = self.model.rating_head is not None
        answers = []
        for row, request in enumerate(requests):
            kept = torch.nonzero(keep[row]).flatten()[:k].tolist()
            answers.append([
                {"rank": rank, **self._movie(int(movie_ids[row, j])), "score": float(values[row, j]),
                 "strategy": request.strategy,
                 **({"predicted_rating": None if np.isnan(ratings[row, j]) else float(ratings[row, j])}
                    if with_rating else {})}
                for rank, j in enumerate(kept, 1)
            ])
        return answers

    def _rating_threshold(self, min_predicted_rating: float | None) -> float | None:
        if min_predicted_rating is None:
            return None
        if self.model.rating_head is None:
            raise InferenceError("min_predicted_rating needs a checkpoint with a rating head (trained with "
                                 "--rating_prediction_weight > 0)")
        if isinstance(min_predicted_rating, bool) or not isinstance(min_predicted_rating, (int, float)) \
                or not 1.0 <= min_predicted_rating <= 5.0:
            raise InferenceError(f"min_predicted_rating must be a number in 1..5, got {min_predicted_rating!r}")
        return float(min_predicted_rating)

    # ------------------------------------------------------------------------------------------------------
    # What an explanation reads from the model

    def _known_tokens(self, request: _Request) -> list[str]:
        if not self.config.use_user_tokens:
            return []
        known = (request.user_index, *request.features)
        return [name for name, value in zip(USER_TOKENS, known, strict=True) if value != PAD_INDEX]

    @torch.no_grad()
    def _attention(self, request: _Request, window_size: int) -> tuple[list[float | None], dict[str, float]]:
        """Last-layer self-attention of [MASK] to each window item, and its cross-attention per user token."""
        inputs = self._model_inputs([request])
        output = self.model(inputs.item_seq, inputs.days, **inputs.user, return_attention=True)
        last_layer = output.self_attention[-1][0, :, -1, :].mean(dim=0)  # over heads: (T,)
        self_attention = last_layer[-1 - window_size : -1].tolist() if window_size else []
        cross = {}
        if output.cross_attention is not None:
            cross = dict(zip(USER_TOKENS, output.cross_attention[0, -1].tolist(), strict=True))
        return self_attention, cross

    def _movie(self, movie_id: int) -> dict[str, Any]:
        movie = self._movies[movie_id]
        return {"movie_id": movie_id, "title": movie["title"], "genres": movie["genres"], "year": movie["year"]}


# ----------------------------------------------------------------------------------------------------------
# Explanations: built from the scores and attention the engine measured


def signup_counts(offsets: np.ndarray, items: np.ndarray, features: np.ndarray,
                  shape: tuple[int, int, int]) -> np.ndarray:
    """Cumulative counts of training ratings by position in the user's history, for the sign-up prior.

    offsets/items: the users' histories (CSR, time order; row u at offsets[u]:offsets[u + 1]); features: (users,
    3) gender, age, occupation indices; shape: (genders, ages, vocabulary). Returns int32 counts[p, g, a, item]:
    ratings of item at positions < p of the training parts of users with gender index g and age index a, where
    0 stands for any (counts[p, 0, 0] is everyone), p = 0..SIGNUP_POSITIONS.
    """
    lengths = np.diff(offsets)
    users = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(users)) - offsets[users]
    keep = training_part(offsets) & (position < SIGNUP_POSITIONS)
    users, position, items = users[keep], position[keep], items[keep]
    gender, age = features[users, 0], features[users, 1]
    counts = np.zeros((SIGNUP_POSITIONS + 1, *shape), dtype=np.int32)
    for g, a in ((gender, age), (gender, 0), (0, age), (0, 0)):
        np.add.at(counts, (position + 1, g, a, items), 1)
    return counts.cumsum(axis=0, dtype=np.int32)


def signup_prior(group: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """Per row, half the group's distribution and half everyone's (everyone's alone when the group rated nothing
    there), plus SIGNUP_FLOOR: a probability per column, never 0. Rows of zeros give a flat row."""
    def share(counts: np.ndarray) -> np.ndarray:
        return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)

    has_group = group.sum(axis=1, keepdims=True) > 0
    return np.where(has_group, 0.5 * share(group) + 0.5 * share(overall), share(overall)) + SIGNUP_FLOOR


def signup_window_prior(counts: np.ndarray, n: np.ndarray, gender: np.ndarray, age: np.ndarray,
                        window: tuple[int, int] = NEW_USER_PRIOR_WINDOW) -> np.ndarray:
    """(len(n), vocabulary) sign-up prior of new users with n ratings and these gender / age indices, from
    signup_counts' cumulative counts: positions n - before .. n + after - 1 for window = (before, after)
    (signup_prior)."""
    before, after = window
    low = np.clip(n - before, 0, SIGNUP_POSITIONS)
    high = np.clip(n + after, 0, SIGNUP_POSITIONS)
    group = (counts[high, gender, age] - counts[low, gender, age]).astype(np.float64)
    overall = (counts[high, 0, 0] - counts[low, 0, 0]).astype(np.float64)
    return signup_prior(group, overall)


def faded_weight(weight: float, fade: float, n: np.ndarray | int, steepness: float = 1.0) -> np.ndarray:
    """The prior's weight after n ratings: weight / (1 + (n / fade) ** steepness), half of it at n = fade (steepness
    1: weight * fade / (fade + n)); weight itself when fade is math.inf."""
    n = np.asarray(n, dtype=np.float64)
    return weight * (np.ones_like(n) if math.isinf(fade) else 1.0 / (1.0 + (n / fade) ** steepness))


def _deletions(request: _Request, window_size: int) -> list[_Request]:
    """The request once per item of the model's window (oldest first) with that item deleted: older items slide
    into the window."""
    return [
        dataclasses.replace(request, items=np.delete(request.items, i), days=np.delete(request.days, i))
        for i in range(len(request.items) - window_size, len(request.items))
    ]


def _hide_token(request: _Request, name: str) -> _Request:
    """The request with user token `name` (identity, gender, age or occupation) set to unknown."""
    if name == "identity":
        return dataclasses.replace(request, user_index=0)
    features = list(request.features)
    features[USER_TOKENS.index(name) - 1] = 0
    return dataclasses.replace(request, features=tuple(features))


def _ranks(scores: torch.Tensor, target_scores: torch.Tensor) -> list[int]:
    """1 + the number of movies scoring strictly higher than the target, per row (a listed movie's rank)."""
    return ((scores > target_scores[:, None]).sum(dim=1) + 1).tolist()


def _drivers(
    window_movies: list[dict[str, Any]], drops: list[float], ranks_without: list[int], attention: list[float | None]
) -> list[dict[str, Any]]:
    """The window's movies (oldest first) with their position (1 = the newest), score_drop, rank_without and
    attention, the largest score_drop first."""
    measured = zip(window_movies, drops, ranks_without, attention, strict=True)
    drivers = [
        {**movie, "position": len(window_movies) - i, "score_drop": drop, "rank_without": rank, "attention": weight}
        for i, (movie, drop, rank, weight) in enumerate(measured)
    ]
    return sorted(drivers, key=lambda driver: -driver["score_drop"])


def _user_tokens(
    names: list[str], cross_attention: dict[str, float], drops: list[float], ranks_without: list[int]
) -> dict[str, dict[str, Any]]:
    """Per known user token: its cross_attention weight (None without cross-attention), score_drop and
    rank_without when it is hidden."""
    return {
        name: {"cross_attention": cross_attention.get(name), "score_drop": drop, "rank_without": rank}
        for name, drop, rank in zip(names, drops, ranks_without, strict=True)
    }


def _shared_genres(genre_multi_hot: np.ndarray, history_genre_multi_hot: np.ndarray) -> dict[str, int]:
    """Genre -> number of history movies (rows of history_genre_multi_hot) that share it with the movie, most
    shared first; genres no history movie shares are left out."""
    counts = (history_genre_multi_hot * genre_multi_hot).sum(axis=0)
    return {GENRES[g]: int(counts[g]) for g in np.argsort(-counts, kind="stable") if counts[g] > 0}


def _year_relation(year: int | None, history_years: np.ndarray) -> dict[str, Any]:
    """The movie's release year against the median of the history's (NaN: unknown): "same era" within
    SAME_ERA_YEARS, "newer", "older", or "unknown" when either is missing."""
    median = float(np.median(history_years[np.isfinite(history_years)])) if np.isfinite(history_years).any() else None
    if year is None or median is None:
        return {"year": year, "history_median_year": median, "difference": None, "relation": "unknown"}
    difference = year - median
    if abs(difference) <= SAME_ERA_YEARS:
        relation = "same era"
    else:
        relation = "newer" if difference > 0 else "older"
    return {"year": year, "history_median_year": median, "difference": difference, "relation": relation}


def _popularity_explanation(movie: dict[str, Any], count: int, rank: int) -> dict[str, Any]:
    """The explanation of a "popularity" answer: the movie's number of training ratings and its rank by them."""
    return {
        "user_id": None,
        "strategy": POPULARITY,
        "recommended": {**movie, "score": float(count), "rank": rank},
        "drivers": [],
        "shared_genres": {},
        "release_year": _year_relation(movie["year"], np.array([])),
        "user_tokens": {},
        "measures": {"score": "number of ratings in the training parts"},
        "sentence": f'Nothing is known about this user, so "{movie["title"]}" is suggested for its popularity: '
        f"{count} ratings in the training data, rank {rank}.",
    }


def _titles(movies: list[dict[str, Any]]) -> str:
    return " and ".join(f'"{movie["title"]}"' for movie in movies)


def _sentence(explanation: dict[str, Any], window_size: int, k: int = 10) -> str:
    """One plain-language sentence from the explanation's numbers: "We recommend ..." for a movie within the top
    k, "... is ranked 299th for you, ..." below it. Only measured score drops are called influence."""
    title = explanation["recommended"]["title"]
    parts = []
    drivers = [d for d in explanation["drivers"] if d["score_drop"] >= MIN_DRIVER_DROP][:2]
    if len(drivers) == 2 and drivers[1]["score_drop"] < drivers[0]["score_drop"] / 2:
        drivers = drivers[:1]  # name a second item only when it matters about as much as the first
    if len(drivers) == 1:
        drop = drivers[0]["score_drop"]
        parts.append(f"mostly because you watched {_titles(drivers)} (without it, its score drops by {drop:.2f})")
    elif drivers:
        drops = " and ".join(f"{d['score_drop']:.2f}" for d in drivers)
        parts.append(f"mostly because you watched {_titles(drivers)} (without each, its score drops by {drops})")
    elif window_size:
        parts.append(
            f"from your {window_size} most recent movies as a whole (deleting any one of them lowers its score "
            f"by less than {MIN_DRIVER_DROP})"
        )
    else:
        parts.append("from your profile alone (no viewing history)")
    shared = explanation["shared_genres"]
    if shared:
        genre, count = next(iter(shared.items()))
        parts.append(f"it is {genre}, like {count} of your {window_size} recent movies")
    year = explanation["release_year"]
    if year["relation"] == "same era":
        parts.append(f"it is from {year['year']}, the era you watch most (median {year['history_median_year']:.0f})")
    elif year["relation"] in ("newer", "older"):
        parts.append(
            f"it is {abs(year['difference']):.0f} years {year['relation']} than the median release year of your "
            f"recent movies ({year['history_median_year']:.0f})"
        )
    drops = {name: t["score_drop"] for name, t in explanation["user_tokens"].items()
             if t["score_drop"] >= MIN_DRIVER_DROP}
    if drops:  # measured: the score drop when the feature is hidden; attention is only shown beside it
        name = max(drops, key=drops.get)
        label = {"identity": "your own taste profile", "age": "your age group"}.get(name, f"your {name}")
        attention = explanation["user_tokens"][name].get("cross_attention")
        beside = f"; attention to it: {attention:.0%}" if attention is not None else ""
        parts.append(f"of what we know about you, {label} weighed most (hiding it lowers the score by "
                     f"{drops[name]:.2f}{beside})")
    rank = explanation["recommended"].get("rank", 1)
    opening = f'We recommend "{title}" ' if rank <= k else f'"{title}" is ranked {_ordinal(rank)} for you, '
    return opening + "; ".join(parts) + "."


def _ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 299th."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


# ----------------------------------------------------------------------------------------------------------
# Loading and checking


def _device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except ValueError as error:
        raise InferenceError(str(error)) from None


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return read_checkpoint(path)
    except CheckpointFileError as error:
        raise CheckpointError(str(error)) from None


def _build_model(checkpoint: dict[str, Any], path: str | Path) -> EnhancedBERT4Rec:
    try:
        return model_from_checkpoint(checkpoint, path)
    except CheckpointFileError as error:
        raise CheckpointError(str(error)) from None


def _read_metadata(path: str | Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise MetadataError(f"metadata {path} does not exist: pass the metadata.json written by trainer.py")
    try:
        return load_metadata(path)
    except (DataError, ValueError, KeyError, TypeError, AttributeError, OSError) as error:
        raise MetadataError(
            f"metadata {path} cannot be read ({error.__class__.__name__}: {error}); rewrite it with data_processor.py"
        ) from None


def _check_same_data(
    checkpoint: dict[str, Any], metadata: dict[str, Any], config: ModelConfig, model_path: str | Path,
    metadata_path: str | Path,
) -> None:
    """The metadata must describe the data the checkpoint was trained on: same fingerprint, same sizes."""
    trained_on, described = checkpoint["data_fingerprint"], metadata.get("fingerprint")
    if trained_on != described:
        raise MetadataMismatchError(
            f"metadata {metadata_path} describes other data than checkpoint {model_path} was trained on "
            f"(fingerprint {str(described)[:12]} vs {str(trained_on)[:12]}): use the metadata.json of that run"
        )
    sizes = metadata.get("sizes", {})
    differ = [name for name in ("num_items", "num_users") if sizes.get(name) != getattr(config, name)]
    if differ:
        raise MetadataMismatchError(
            f"metadata {metadata_path} has other {', '.join(differ)} than checkpoint {model_path}: rewrite it"
        )


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InferenceError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InferenceError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _rows(values: Any, name: str) -> Sequence[Any]:
    """A batch argument: a non-empty list, tuple or array (one entry per user)."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise InferenceError(f"{name} must be a list (one entry per user), got {type(values).__name__} {values!r}")
    if not len(values):
        raise InferenceError(f"{name} is empty: pass at least one user")
    return values


def _positive_int(value: Any, name: str) -> int:
    value = _as_int(value, name)
    if value <= 0:
        raise InferenceError(f"{name} must be positive, got {value}")
    return value


def _demographic_fields(row: Mapping[str, Any] | None, index: int) -> dict[str, Any]:
    """One row of a batch's demographics as _resolve's keyword arguments."""
    if row is None:
        return {}
    if not isinstance(row, Mapping) or set(row) - {"gender", "age", "occupation"}:
        raise InferenceError(f"demographics[{index}] must be None or a dict of gender, age, occupation; got {row!r}")
    return dict(row)


def _as_id_array(values: Sequence[int], name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise InferenceError(f"{name} must be a list of integers, got {values!r}")
    bad = [value for value in values if isinstance(value, bool) or not isinstance(value, (int, np.integer))]
    if bad:
        raise InferenceError(f"{name} must hold integers only, got {bad[0]!r}")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _row_writer(file: Any, suffix: str) -> Any:
    """A function writing one export row (a dict in EXPORT_COLUMNS order) as CSV or as a JSON line."""
    if suffix == ".jsonl":
        return lambda row: file.write(json.dumps(row, ensure_ascii=False) + "\n")
    writer = csv.DictWriter(file, fieldnames=EXPORT_COLUMNS)
    writer.writeheader()
    return writer.writerow


def _warn_cold(requests: list[_Request]) -> None:
    cold = sorted({movie_id for r in requests for movie_id in r.cold_movie_ids})
    if cold:
        warnings.warn(
            f"never-rated MovieID(s) {cold[:10]}{' ...' if len(cold) > 10 else ''} in the history: the model has "
            "no embedding for them and skips them", ColdItemWarning, stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------------------
# Command line


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2), like every other error of this CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


_ID = re.compile(r"[ \t]*[0-9]{1,12}[ \t]*")  # ASCII digits only: int() would also take "１", "+5" and "1_0"


def _id_list(text: str) -> list[int]:
    """A CLI list of ids: positive integers separated by commas, spaces around them allowed; anything else (an
    empty item, a sign, a non-ASCII digit, more than 12 digits) is refused rather than guessed at."""
    parts = text.split(",")
    if not all(_ID.fullmatch(part) for part in parts) or not all(int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,5,10, got {text!r}")
    return [int(part) for part in parts]


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" once: not for flags whose help already names its default, nor for None or False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or "") or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The inference.py command line."""
    parser = _OneLineParser(
        description="Recommend movies with a trained enhanced BERT4Rec (ids are MovieLens UserIDs/MovieIDs).",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--model_path", default="checkpoints/best_model.pt", help="checkpoint from trainer.py")
    parser.add_argument("--metadata_path", help="metadata.json of the same data (default: the one beside "
                        "--model_path, where trainer.py writes it)")
    parser.add_argument("--user_id", type=int, help="UserID (omit for a new user)")
    parser.add_argument("--item_sequence", type=_id_list, help="MovieIDs in time order, e.g. 1,5,10 "
                        "(default: the user's known history)")
    parser.add_argument("--timestamps", type=_id_list, help="Unix seconds of --item_sequence's items")
    parser.add_argument("--k", type=int, default=10, help="number of recommendations")
    parser.add_argument("--include_seen", action="store_true", help="do not exclude the history's movies")
    parser.add_argument("--min_predicted_rating", type=float, help="leave out movies the rating head predicts "
                        "below this (1-5); the list stays --k long while enough movies remain")
    parser.add_argument("--gender", choices=["F", "M"], help="a new user's gender")
    parser.add_argument("--age", type=int, help="a new user's age in years")
    parser.add_argument("--occupation", type=int, help="a new user's ML-1M occupation code 0..20")
    parser.add_argument("--new_user_prior_weight", type=float, default=NEW_USER_PRIOR_WEIGHT,
                        help="weight of the sign-up prior in a new user's scores (0: the model alone)")
    parser.add_argument("--new_user_prior_fade", type=float, default=NEW_USER_PRIOR_FADE,
                        help="ratings after which the sign-up prior's weight halves (inf: never)")
    parser.add_argument("--new_user_prior_steepness", type=float, default=NEW_USER_PRIOR_STEEPNESS,
                        help="how sharply the sign-up prior's weight falls around --new_user_prior_fade ratings "
                        "(1: as fade / (fade + n))")
    parser.add_argument("--new_user_prior_window", type=int, nargs=2, default=list(NEW_USER_PRIOR_WINDOW),
                        metavar=("BEFORE", "AFTER"), help="a new user with n ratings gets the prior of positions "
                        "n - BEFORE .. n + AFTER - 1 of the known users' histories")
    parser.add_argument("--explain", action="store_true", help="explain each recommendation")
    parser.add_argument("--profile", action="store_true", help="print the user's profile first")
    parser.add_argument("--cold_items", action="store_true", help="also list never-rated movies by genre similarity")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--all_users", action="store_true", help="top k of every known user, written to --output")
    parser.add_argument("--output", help="file for --all_users: .csv or .jsonl (format by extension)")
    return parser


def _table(records: list[dict[str, Any]]) -> str:
    """Text table of records; a "rating" column (the predicted 1-5 rating, one decimal) when they carry one."""
    width = max([5, *(len(r["title"]) for r in records)])
    rated = any("predicted_rating" in r for r in records)
    rating_header = f"  {'rating':>6}" if rated else ""
    lines = [f"{'rank':>4}  {'movie_id':>8}  {'title':<{width}}  {'year':>4}  {'score':>8}{rating_header}  genres"]
    for record in records:
        year = "" if record["year"] is None else record["year"]
        rating = record.get("predicted_rating")
        rating_cell = (f"  {'-' if rating is None else f'{rating:.1f}':>6}") if rated else ""
        lines.append(
            f"{record['rank']:>4}  {record['movie_id']:>8}  {record['title']:<{width}}  {year:>4}  "
            f"{record['score']:>8.3f}{rating_cell}  {'|'.join(record['genres'])}"
        )
        if "explanation" in record:
            lines.append(f"{'':>6}why: {record['explanation']['sentence']}")
    return "\n".join(lines)


def _profile_text(profile: dict[str, Any]) -> str:
    genres = ", ".join(f"{g['genre']} {g['share']:.0%}" for g in profile["top_genres"])
    if "predicted_top_genres" in profile:
        predicted = ", ".join(f"{g['genre']} {g['share']:.0%}" for g in profile["predicted_top_genres"])
        genres += f"\npredicted genre mix (preference head): {predicted}"
    recent = "; ".join(movie["title"] for movie in profile["recent_movies"])
    return (
        f"user {profile['user_id']}: {profile['gender']}, {profile['age_group']}, {profile['occupation']} "
        f"(occupation {profile['occupation_code']})\n"
        f"{profile['num_ratings']} ratings, mean {profile['mean_rating']:.2f}; top genres: {genres}\n"
        f"most recent: {recent}"
    )


def _answer(engine: RecommendationEngine, args: argparse.Namespace) -> dict[str, Any]:
    """Everything the flags ask for: recommendations (each with its explanation), profile, cold items."""
    request = {
        "user_id": args.user_id, "item_sequence": args.item_sequence, "timestamps": args.timestamps,
        "gender": args.gender, "age": args.age, "occupation": args.occupation,
    }  # fmt: skip
    records = engine.get_recommendations(k=args.k, filter_seen=not args.include_seen,
                                         min_predicted_rating=args.min_predicted_rating, **request)
    if args.explain:
        for record in records:
            try:
                record["explanation"] = engine.explain_recommendation(
                    **request, recommended_item_id=record["movie_id"], k=args.k)
            except AlreadySeenError:  # --include_seen lists the history's own movies
                record["explanation"] = {"sentence": f'"{record["title"]}" is already in this history.'}
    strategy = records[0]["strategy"] if records else None
    answer = {"user_id": args.user_id, "strategy": strategy, "recommendations": records}
    if args.profile:
        answer["profile"] = engine.get_user_profile(args.user_id)
    if args.cold_items:
        answer["cold_items"] = engine.get_cold_item_recommendations(
            args.user_id, args.item_sequence, k=args.k, filter_seen=not args.include_seen
        )
    return answer


def _print_text(answer: dict[str, Any], prior_weight: float) -> None:
    if "profile" in answer:
        print(_profile_text(answer["profile"]) + "\n")
    who = "a new user" if answer["user_id"] is None else f"user {answer['user_id']}"
    scores = "the model's item scores"
    if answer["strategy"] == POPULARITY:
        scores = "ratings in the training data"
    elif answer["strategy"] in (SEQUENCE, DEMOGRAPHICS) and prior_weight:
        scores = "the model's log-probabilities plus the weighted log sign-up prior"
    print(f"top {len(answer['recommendations'])} for {who} (strategy: {answer['strategy']}; score: {scores})")
    print(_table(answer["recommendations"]))
    if "cold_items" in answer:
        print("\nnever-rated movies, by genre/year similarity to the history (0..1, not comparable with the above):")
        print(_table(answer["cold_items"]))


def _warning_line(message: Warning | str, *details: Any, **more: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Print recommendations (and optionally explanations, the profile, cold items). Returns the exit status."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("once")  # a warning repeated by each explanation is printed once
        warnings.showwarning = _warning_line  # one line per warning; restored on exit
        try:
            if args.profile and args.user_id is None:
                raise InferenceError("--profile needs --user_id")
            if args.all_users != (args.output is not None):
                raise InferenceError("--all_users and --output go together: --all_users --output recs.csv")
            engine = RecommendationEngine(args.model_path, args.metadata_path, device=args.device,
                                          new_user_prior_weight=args.new_user_prior_weight,
                                          new_user_prior_fade=args.new_user_prior_fade,
                                          new_user_prior_window=tuple(args.new_user_prior_window),
                                          new_user_prior_steepness=args.new_user_prior_steepness)
            if args.all_users:
                rows = engine.export_recommendations(args.output, k=args.k, filter_seen=not args.include_seen)
                print(f"wrote {rows} recommendations for {len(engine.user_ids)} users to {args.output}")
                return 0
            answer = _answer(engine, args)
        except (InferenceError, OSError) as error:  # OSError: the export's disk is full, its folder went away
            print(f"error: {error}", file=sys.stderr)
            return 1
    try:
        if args.json:
            print(json.dumps(answer, ensure_ascii=False, indent=2))
        else:
            _print_text(answer, engine.new_user_prior_weight)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
