"""RecommendationEngine: recommendations, explanations, user profiles and cold start from a trained EnhancedBERT4Rec.

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
  of experts; all four were chosen on known users playing new users (docs/RESULTS.md#cold-start). From position 40
  on the prior is flat and changes nothing. Known users are scored by the model alone (signup_prior.py).
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
  not on the model's scale: they are never mixed into the model's ranking (profiles.py).
- Ranks in explanations are metrics.target_ranks + 1: ties count against the movie, as in evaluation. A new user's
  explanation holds the sign-up prior at the user's own (n, gender, age) in every deletion and hiding, so that a
  score drop is the model's own (explanations.py).
- Arguments (inference_inputs.py): ids are positive integers (numpy's too, never bools); a history is a list, tuple
  or 1-D array (a set, dict, string or generator is refused, never guessed at); k beyond the catalogue lists every
  movie once. Files written (exports, plots) are never a folder, the checkpoint or the metadata (resolved paths).
  A checkpoint with NaN or inf weights, or whose probe batch scores are not finite, is refused when loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catalog import (
    POPULARITY,
    Catalog,
    Request,
    default_day,
    index_metadata,
    known_user_ids,
    movie_record,
    resolve,
    resolve_batch,
    user_feature_indices,
    warm_item,
    warn_cold,
)
from data_processor import DataError, load_metadata
from enhanced_model import (
    CheckpointFileError,
    EnhancedBERT4Rec,
    ModelConfig,
    model_from_checkpoint,
    pick_device,
    read_checkpoint,
)
from explanations import (
    display_ranks,
    explanation_sentence,
    explanation_variants,
    held_prior,
    known_tokens,
    measured_explanation,
    popularity_explanation,
    read_attention,
)
from exports import EXPORT_FORMATS, write_export
from inference_inputs import (
    AlreadySeenError,
    Checked,
    CheckpointError,
    InferenceError,
    MetadataError,
    MetadataMismatchError,
    UnknownUserError,
    as_bool,
    as_id,
    day_of_year_setting,
    input_paths,
    output_file,
    positive_int,
    precision_setting,
    prior_fade,
    prior_steepness,
    prior_weight,
    prior_window,
    rating_threshold,
    shown,
)
from plots import plot_influence
from profiles import cold_item_records, predicted_top_genres, user_profile
from scoring import ModelInputs, exclude_history, model_inputs, nonfinite_part, score_and_hidden, top_k_records
from signup_prior import (
    NEW_USER_PRIOR_FADE,
    NEW_USER_PRIOR_STEEPNESS,
    NEW_USER_PRIOR_WEIGHT,
    NEW_USER_PRIOR_WINDOW,
    NewUserPrior,
)

# Users per forward pass of score_batch, recommend_batch and export_recommendations when batch_size is not given.
# On a CPU small batches keep a pass's largest blocks (the feed-forward's activations, users x 50
# positions x 4H) under glibc's mmap threshold (at most 32 MB), so each batch reuses the memory the one before it
# freed instead of having fresh pages mapped and zeroed: every ML-1M user with the best model's shape, fresh
# processes alternating 64 and 512 users, 0.82-0.84x the time in bf16 and 0.66-0.80x in fp32
# (docs/RESULTS.md#benchmarks-speed-and-memory). A GPU keeps the larger batch.
CPU_BATCH_USERS = 64
GPU_BATCH_USERS = 512


def default_batch_users(device: torch.device) -> int:
    """The users per forward pass batch scoring takes on `device` when not told."""
    return CPU_BATCH_USERS if device.type == "cpu" else GPU_BATCH_USERS


@dataclass
class BatchScores:
    """Scores of many users at once: scores[row, j] is the score of movie movie_ids[j] for user row (seen
    movies -inf when filter_seen). Rows follow the user_ids given; strategies[row] says how they were scored."""

    movie_ids: np.ndarray
    scores: torch.Tensor
    strategies: list[str]


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
    precision: "fp32" (the default: the same arithmetic as training's evaluation) or "bf16" (the encoder under bf16
        autocast, item scores still in fp32: much faster where the hardware multiplies bf16, a GPU or a CPU with
        AVX-512 BF16 or AMX, and about 17x slower where it is emulated, as on AVX2 CPUs; rankings can differ slightly
        from fp32's: docs/RESULTS.md). An attribute too.
    Raises CheckpointError (also for a checkpoint whose weights or probe scores are not finite), MetadataError,
    MetadataMismatchError or InferenceError (all ValueError), each naming the argument or file.

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
        precision: str = "fp32",
    ) -> None:
        self.precision = precision
        self.new_user_prior_weight = new_user_prior_weight
        self.new_user_prior_fade = new_user_prior_fade
        self.new_user_prior_steepness = new_user_prior_steepness
        self.new_user_prior_window = new_user_prior_window
        self.default_day_of_year = day_of_year_setting(default_day_of_year)
        self.device = _device(device)
        self._inputs = input_paths(model_path, metadata_path)  # read, never written over
        self.model, self._catalog = _load(self._inputs["model_path"], self._inputs["metadata_path"], self.device)
        self.config: ModelConfig = self.model.config

    # ------------------------------------------------------------------------------------------------------
    # Public API

    # the sign-up prior's settings, each checked whenever it is set (inference_inputs.Checked)
    new_user_prior_weight = Checked(prior_weight, "Weight of the sign-up prior in new users' scores (0: the model "
                                    "alone).")
    new_user_prior_fade = Checked(prior_fade, "Number of ratings after which the sign-up prior's weight halves "
                                  "(math.inf: never).")
    new_user_prior_steepness = Checked(prior_steepness, "How sharply the sign-up prior's weight falls around "
                                       "new_user_prior_fade ratings (1: fade / (fade + n)).")
    precision = Checked(precision_setting, "The encoder's arithmetic when scoring: fp32 or bf16.")
    new_user_prior_window = Checked(prior_window, "(before, after): a new user with n ratings gets the known users' "
                                    "ratings at positions n - before .. n + after - 1 in the sign-up prior.")

    @property
    def user_ids(self) -> list[int]:
        """The known UserIDs, ascending."""
        return sorted(self._catalog.user_index)

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
        user_features: Mapping[str, Any] | None = None,
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
        user_features: the same for any dataset, by feature name ({"country": "DE"}; ML-1M: {"age": 25}):
            a categorical feature's value as the dataset writes it, a bucketed feature's number.
        min_predicted_rating: leave out movies whose predicted rating (rating head, 1-5) is below this; the list
            stays k long while enough movies remain (needs a checkpoint with a rating head).
        Returns one dict per movie: rank, movie_id, title, genres, year, score, strategy (module docstring) and,
        with a rating head, predicted_rating.
        """
        k, filter_seen = positive_int(k, "k"), as_bool(filter_seen, "filter_seen")
        threshold = rating_threshold(min_predicted_rating, self.model.rating_head is not None)
        request = self._resolve(user_id, item_sequence, timestamps, gender, age, occupation, user_features)
        warn_cold([request])
        scores, hidden = self._score_and_hidden([request], filter_seen)
        return top_k_records(self.model, self._catalog, scores, hidden, k, [request], threshold)[0]

    def score_batch(
        self,
        user_ids: Sequence[int | None],
        item_sequences: Sequence[Sequence[int] | None] | None = None,
        timestamps: Sequence[Sequence[int] | None] | None = None,
        filter_seen: bool = True,
        batch_size: int | None = None,
        demographics: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> BatchScores:
        """Scores of every movie for many users, batch_size users per forward pass (offline use; None:
        default_batch_users).

        Each row follows get_recommendations' rules for (user_ids[i], item_sequences[i], timestamps[i],
        **demographics[i]); item_sequences None = every user's known history; demographics[i] is None or a dict
        with any of gender, age, occupation (a new user's, or overrides of a known user's).
        """
        requests = self._resolve_batch(user_ids, item_sequences, timestamps, demographics)
        scores = self._score_and_hidden(requests, as_bool(filter_seen, "filter_seen"), batch_size)[0]
        return BatchScores(self._catalog.item_movie_ids[1:-1], scores[:, 1:-1], [r.strategy for r in requests])

    def recommend_batch(
        self,
        user_ids: Sequence[int | None],
        item_sequences: Sequence[Sequence[int] | None] | None = None,
        timestamps: Sequence[Sequence[int] | None] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        batch_size: int | None = None,
        min_predicted_rating: float | None = None,
        demographics: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """get_recommendations for many users at once (see score_batch); one list per user, in order."""
        k = positive_int(k, "k")
        threshold = rating_threshold(min_predicted_rating, self.model.rating_head is not None)
        requests = self._resolve_batch(user_ids, item_sequences, timestamps, demographics)
        scores, hidden = self._score_and_hidden(requests, as_bool(filter_seen, "filter_seen"), batch_size)
        return top_k_records(self.model, self._catalog, scores, hidden, k, requests, threshold)

    def export_recommendations(
        self,
        path: str | Path,
        user_ids: Sequence[int] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        batch_size: int | None = None,
        progress: bool = True,
        min_predicted_rating: float | None = None,
    ) -> int:
        """Write the top k of known users (default: all, from their whole history) to `path`, as recommend_batch
        lists them: CSV for a .csv name, JSON Lines for .jsonl, one row per (user, rank) with user_id, rank, movie_id,
        title, score, predicted_rating (empty/null without a rating head) and strategy (exports.py: streamed, written
        atomically, formula-like CSV text with a leading apostrophe). The path must not be a folder, the checkpoint
        or the metadata; an existing file there is replaced whole. Returns the number of rows written."""
        path = output_file(path, "path", EXPORT_FORMATS, self._inputs)
        user_ids = self.user_ids if user_ids is None else known_user_ids(self._catalog, user_ids)
        k, batch_size = positive_int(k, "k"), self._batch_users(batch_size)
        filter_seen, progress = as_bool(filter_seen, "filter_seen"), as_bool(progress, "progress")
        rating_threshold(min_predicted_rating, self.model.rating_head is not None)
        return write_export(path, lambda chunk: self.recommend_batch(
            chunk, k=k, filter_seen=filter_seen, batch_size=batch_size, min_predicted_rating=min_predicted_rating),
            user_ids, batch_size, progress)

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
        user_features: Mapping[str, Any] | None = None,
        plot: str | Path | None = None,
        k: int = 10,
    ) -> dict[str, Any]:
        """Why recommended_item_id (a MovieID) is recommended to this user (arguments as get_recommendations).

        plot: a .png path for a bar chart of the drivers' score drops (plots.plot_influence; needs matplotlib); not
            a folder, the checkpoint or the metadata.
        k: the length of the list the user sees: a movie ranked below it is described by its rank ("ranked 299th
            for you"), not as a recommendation. A movie of the history itself is refused (AlreadySeenError).

        Returns a dict: "recommended" (the movie, its score and rank with seen movies excluded); "drivers" (the
        history items the model read, most influential first: score_drop when the item is deleted, rank_without,
        and attention shown beside); "shared_genres" (genre -> number of those items that have it);
        "release_year" (its year against the items' median); "user_tokens" (per identity/gender/age/occupation
        token: cross_attention weight at the [MASK] position and score_drop when hidden); "measures" (what
        each number means); "sentence" (one plain-language sentence); "strategy"; "signup_prior" (None, or for a new
        user scored with the sign-up prior its weight w(n) and its term in the movie's score: held fixed in every
        deletion and hiding, so that each score_drop is the model's own).
        """
        k = positive_int(k, "k")
        plot = None if plot is None else output_file(plot, "plot", (".png",), self._inputs)
        request = self._resolve(user_id, item_sequence, timestamps, gender, age, occupation, user_features)
        warn_cold([request])
        item = warm_item(self._catalog, recommended_item_id)
        if item in request.items:
            raise AlreadySeenError(f"movie {recommended_item_id} is already in this user's history, so it is never "
                                   "recommended to them: explain a movie outside the history")
        if request.strategy == POPULARITY:
            movie = movie_record(self._catalog, int(self._catalog.item_movie_ids[item]))
            return popularity_explanation(movie, self._catalog.popularity, item)
        window_size = min(len(request.items), self.config.seq_length - 1)
        token_names = known_tokens(request, self.config)
        variants = explanation_variants(request, window_size, token_names, self.config)
        scores = self._score_and_hidden(variants, False, prior_of=request)[0]
        exclude_history(scores, [request] * len(scores))
        attention = read_attention(self.model, self._model_inputs([request]), window_size)
        explanation = measured_explanation(self._catalog, user_id, request, int(recommended_item_id), scores,
                                           display_ranks(scores, item), attention, window_size, token_names,
                                           held_prior(self._catalog, request, item, self._prior()))
        explanation["sentence"] = explanation_sentence(explanation, window_size, k)
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
        user_id = as_id(user_id, "user_id", UnknownUserError)
        if user_id not in self._catalog.user_index:
            raise UnknownUserError(f"unknown user_id {user_id}: not in the metadata's users")
        predicted = None
        if self.model.preference_head is not None:
            predicted = predicted_top_genres(self.model, self._model_inputs([self._resolve(user_id, None, None)]),
                                             self._catalog.genre_names)
        return user_profile(self._catalog, user_id, predicted)

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
        movie_ids: rank only these MovieIDs (a non-empty list or set; each a movie the model has no embedding for).
        """
        k, filter_seen = positive_int(k, "k"), as_bool(filter_seen, "filter_seen")
        request = self._resolve(user_id, item_sequence, None)
        return cold_item_records(self._catalog, request, k, filter_seen, movie_ids)

    # ------------------------------------------------------------------------------------------------------
    # The engine's settings handed to the functions that do the work

    def _resolve(self, user_id: int | None, item_sequence: Sequence[int] | None, timestamps: Sequence[int] | None,
                 gender: str | None = None, age: int | str | None = None, occupation: int | str | None = None,
                 user_features: Mapping[str, Any] | None = None) -> Request:
        if user_features is not None and not isinstance(user_features, Mapping):
            raise InferenceError(f"user_features must be a dict of feature name -> value, got "
                                 f"{shown(user_features)}")
        named = {"gender": gender, "age": age, "occupation": occupation}
        demographics = user_feature_indices(self._catalog, {key: value for key, value in named.items()
                                                            if value is not None} | dict(user_features or {}))
        return resolve(self._catalog, user_id, item_sequence, timestamps, demographics,
                       default_day(self.default_day_of_year), self.config.use_user_tokens)

    def _resolve_batch(self, user_ids: Sequence[int | None], item_sequences: Sequence[Sequence[int] | None] | None,
                       timestamps: Sequence[Sequence[int] | None] | None,
                       demographics: Sequence[Mapping[str, Any] | None] | None) -> list[Request]:
        requests = resolve_batch(self._catalog, user_ids, item_sequences, timestamps, demographics,
                                 default_day(self.default_day_of_year), self.config.use_user_tokens)
        warn_cold(requests)
        return requests

    def _model_inputs(self, requests: list[Request]) -> ModelInputs:
        return model_inputs(requests, self.config, default_day(self.default_day_of_year), self.device)

    def _prior(self) -> NewUserPrior:
        return NewUserPrior(self.new_user_prior_weight, self.new_user_prior_fade, self.new_user_prior_steepness,
                            self.new_user_prior_window)

    def _batch_users(self, batch_size: int | None) -> int:
        """batch_size as given (a positive int), or when None the device's default (default_batch_users)."""
        if batch_size is None:
            return default_batch_users(self.device)
        return positive_int(batch_size, "batch_size")

    def _score_and_hidden(self, requests: list[Request], filter_seen: bool, batch_size: int | None = None,
                          prior_of: Request | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return score_and_hidden(self.model, self._catalog, requests, filter_seen, self._batch_users(batch_size),
                                default_day(self.default_day_of_year), self._prior(), prior_of,
                                self.precision == "bf16")


# ----------------------------------------------------------------------------------------------------------
# Loading and checking: each problem a caller can fix becomes an InferenceError naming the file


def _load(model_path: Path, metadata_path: Path, device: torch.device) -> tuple[EnhancedBERT4Rec, Catalog]:
    """The model (eval mode, on device) and the catalog of its metadata.json, checked to describe the same data
    and to score with finite numbers."""
    checkpoint = _read_checkpoint(model_path)
    metadata = _read_metadata(metadata_path)
    model = _build_model(checkpoint, model_path).to(device).eval()
    _check_same_data(checkpoint, metadata, model.config, model_path, metadata_path)
    problem = nonfinite_part(model)
    if problem is not None:
        raise CheckpointError(f"checkpoint {model_path} is broken: NaN or inf in its {problem}, so it cannot rank "
                              "movies; use an earlier checkpoint of the run or train again")
    try:
        return model, index_metadata(metadata, model.config)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise MetadataError(
            f"metadata {metadata_path} is incomplete ({error.__class__.__name__}: {error}); "
            "rewrite it with data_processor.py"
        ) from None


def _device(name: str) -> torch.device:
    if not isinstance(name, str):
        raise InferenceError(f"device must be a str (auto, cpu, cuda or cuda:N), got {type(name).__name__}")
    try:
        return pick_device(name)
    except ValueError as error:
        raise InferenceError(str(error)) from None


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        inside = " (best_model.pt in it?)" if (path / "best_model.pt").is_file() else ""
        raise CheckpointError(f"checkpoint {path} is a folder: pass the checkpoint file{inside}")
    try:
        return read_checkpoint(path)
    except CheckpointFileError as error:
        raise CheckpointError(str(error)) from None


def _build_model(checkpoint: dict[str, Any], path: str | Path) -> EnhancedBERT4Rec:
    try:
        return model_from_checkpoint(checkpoint, path)
    except CheckpointFileError as error:
        raise CheckpointError(str(error)) from None


def _read_metadata(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise MetadataError(f"metadata {path} is a folder: pass the metadata.json file written by trainer.py")
    if not path.is_file():
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
