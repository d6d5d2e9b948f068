"""metadata.json as arrays, and a request's ids resolved to the model's indices and a strategy.

The engine never reads the raw files: movies, the id maps and every known user's history come from the
metadata.json written with the checkpoint. This module turns them into arrays for vectorised look-ups (Catalog)
and turns one caller's MovieIDs / UserID / demographics into the model's indices (Request).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_model import bucket_index
from data_processor import ML1M_ITEM_FEATURES, ML1M_USER_FEATURES, PAD_INDEX, day_of_year, training_part
from enhanced_model import ModelConfig
from inference_inputs import (
    ColdItemError,
    ColdItemWarning,
    InferenceError,
    UnknownItemError,
    UnknownUserError,
    as_id,
    as_id_array,
    as_int,
    as_timestamp_array,
    batch_rows,
    demographic_fields,
    shown,
)
from signup_prior import signup_counts

MAX_SIGNUP_GROUPS = 32
PERSONALIZED, SEQUENCE, DEMOGRAPHICS, POPULARITY, GENRE_SIMILARITY = (
    "personalized", "sequence", "demographics", "popularity", "genre_similarity",
)  # fmt: skip


@dataclass
class Catalog:
    """The metadata's movies, items and users as arrays. Movie rows follow ascending MovieIDs; item indices are the
    model's (0 = padding or never rated); user index 0 is the unknown user; histories are CSR rows in time order
    (row = user index, history_offsets; metadata.json's "histories")."""

    vocabularies: dict[str, Any]
    schema: dict[str, Any]  # metadata.json's feature declarations (data_processor.build_metadata)
    genre_names: list[str]  # the preference feature's values (ML-1M: the genres), columns of movie_genres
    movies: dict[int, dict[str, Any]]
    movie_ids: np.ndarray  # movie row -> MovieID
    movie_row: np.ndarray  # MovieID -> movie row, -1 for ids not in movies.dat
    movie_genres: np.ndarray  # (movies, genre_names) multi-hot; no columns when the items have no multi feature
    movie_years: np.ndarray  # release year per movie row (a "year" feature), NaN when unknown or not a feature
    item_movie_ids: np.ndarray  # item index -> MovieID, -1 for padding and [MASK]
    item_of_movie: np.ndarray  # MovieID -> item index, 0 for never-rated (or unknown) movies
    item_movie_rows: np.ndarray  # item index - 1 -> movie row
    users: dict[int, dict[str, Any]]
    user_index: dict[int, int]
    user_feature_names: list[str]  # the model's user features (ML-1M: gender, age, occupation)
    user_features: np.ndarray  # (users, user_feature_names) indices, 0 = unknown
    history_offsets: np.ndarray
    history_items: np.ndarray
    history_days: np.ndarray
    history_ratings: np.ndarray  # as the data has them (0 when it has no ratings)
    event_keys: np.ndarray  # sorted user * vocabulary + item of every rating, for the day it was rated
    event_days: np.ndarray
    item_vocab_size: int
    popularity: np.ndarray  # training-part ratings per item; -inf for padding and [MASK]
    signup: np.ndarray  # signup_prior.signup_counts
    training_genre_mix: np.ndarray  # mean genre multi-hot of all training ratings

    def history(self, user_index: int) -> slice:
        """Where a user's events are in history_items, history_days and history_ratings."""
        return slice(self.history_offsets[user_index], self.history_offsets[user_index + 1])

    @property
    def signup_group_sizes(self) -> tuple[int, int]:
        return self.signup.shape[1], self.signup.shape[2]


@dataclass
class Request:
    """One user's input in model indices. items/days: the warm history in time order, all of it."""

    user_index: int
    features: tuple[int, ...]  # Catalog.user_feature_names' indices (ML-1M: gender, age, occupation), 0 = unknown
    items: np.ndarray
    days: np.ndarray
    cold_movie_ids: list[int]
    strategy: str


def ml1m_schema() -> dict[str, Any]:
    """The declarations of ML-1M's features (data_processor's), for a metadata.json written before they were stored
    in it."""
    declared = {side: [{"name": f.name, **f.to_json()} for f in features if f.kind != "display"]
                for side, features in (("items", ML1M_ITEM_FEATURES), ("users", ML1M_USER_FEATURES))}
    return {"name": "ml-1m", "preference_feature": "genres", "has_ratings": True, **declared}


def index_metadata(metadata: dict[str, Any], config: ModelConfig) -> Catalog:
    """Arrays for vectorised look-ups: movies, items, users, histories (CSR), popularity."""
    vocabularies, movies = metadata["vocabularies"], metadata["movies"]
    schema = metadata.get("schema") or ml1m_schema()
    preference = next((f for f in schema["items"] if f["name"] == schema["preference_feature"]), None)
    genre_names = [str(value) for value in preference["vocabulary"]] if preference else []
    movie_ids = np.array(sorted(movies), dtype=np.int64)
    movie_row = np.full(int(movie_ids.max()) + 1, -1, dtype=np.int64)
    movie_row[movie_ids] = np.arange(len(movie_ids))
    movie_genres = np.zeros((len(movie_ids), len(genre_names)), dtype=np.float32)
    if preference:
        column = {value: i for i, value in enumerate(preference["vocabulary"])}
        for row, movie_id in enumerate(movie_ids.tolist()):
            movie_genres[row, [column[value] for value in movies[movie_id][preference["name"]]]] = 1.0
    movie_years = np.array([np.nan if movies[m].get("year") is None else movies[m]["year"]
                            for m in movie_ids.tolist()], dtype=np.float64)
    item_movie_ids = np.array([-1 if m is None else m for m in metadata["movie_id_by_item_index"]])
    item_of_movie = np.zeros(len(movie_row), dtype=np.int64)
    item_of_movie[item_movie_ids[1:-1]] = np.arange(1, config.num_items + 1)
    item_movie_rows = movie_row[item_movie_ids[1:-1]]

    users, user_index = metadata["users"], metadata["user_index_by_user_id"]
    user_ids = metadata["user_id_by_user_index"]
    names = [feature["name"] for feature in config.user_features]
    user_features = np.zeros((len(user_ids), len(names)), dtype=np.int64)
    for index, user_id in enumerate(user_ids[1:], start=1):
        user = users[user_id]
        user_features[index] = [user[f"{name}_index"] for name in names]
    histories = metadata["histories"]
    history_offsets = histories["offsets"].astype(np.int64)
    lengths = np.diff(history_offsets)
    history_items = histories["items"].astype(np.int64)
    history_days = histories["days"].astype(np.int64)
    # (user, item) -> day of that rating, by binary search over user * vocabulary + item
    keys = np.repeat(np.arange(len(lengths)), lengths) * config.item_vocab_size + history_items
    order = np.argsort(keys, kind="stable")
    # popularity over the training parts only (docs/EVALUATION.md: no statistic sees validation or test)
    popularity = np.bincount(history_items[training_part(history_offsets)],
                             minlength=config.item_vocab_size).astype(np.float32)
    popularity[[PAD_INDEX, config.mask_index]] = -np.inf
    group_sizes = [feature["size"] if feature["size"] <= MAX_SIGNUP_GROUPS else 1 for feature in config.user_features]
    group_sizes = (group_sizes + [1, 1])[:2]
    signup = signup_counts(history_offsets, history_items, _signup_groups(user_features, group_sizes),
                           (*group_sizes, config.item_vocab_size))
    training_counts = popularity[1:-1]
    return Catalog(
        vocabularies, schema, genre_names, movies, movie_ids, movie_row, movie_genres, movie_years, item_movie_ids,
        item_of_movie, item_movie_rows, users, user_index, names, user_features, history_offsets,
        history_items, history_days, histories["ratings"], keys[order], history_days[order], config.item_vocab_size,
        popularity, signup,
        training_counts @ movie_genres[item_movie_rows] / training_counts.sum(),
    )


def _signup_groups(features: np.ndarray, group_sizes: list[int] | tuple[int, int]) -> np.ndarray:
    """(rows, 2) the sign-up prior's group indices: the first two user features (ML-1M: gender and age); an absent
    one, or one of more than MAX_SIGNUP_GROUPS values (its counts would not fit), is the single group 0."""
    groups = np.zeros((len(features), 2), dtype=np.int64)
    for column in range(min(2, features.shape[1])):
        if group_sizes[column] > 1:
            groups[:, column] = features[:, column]
    return groups


def signup_groups(catalog: Catalog, features: np.ndarray) -> np.ndarray:
    """_signup_groups of requests' user feature indices (rows, user_feature_names)."""
    return _signup_groups(features, catalog.signup_group_sizes)


def movie_record(catalog: Catalog, movie_id: int) -> dict[str, Any]:
    """The movie's id, title and each item feature's value by its name (ML-1M: genres, year), not the model's
    indices; with lists of its own (own_lists)."""
    return own_lists({"movie_id": movie_id, **{key: value for key, value in catalog.movies[movie_id].items()
                                               if not key.endswith("_index")}})


def own_lists(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of record whose list values (a movie's genres) are copies too: a caller changing one record's list
    must change neither the catalog nor another record."""
    return {key: value.copy() if isinstance(value, list) else value for key, value in record.items()}


def default_day(day: int | None) -> int:
    """The day given to items without a known one: the engine's default_day_of_year, else today's (UTC)."""
    return int(day_of_year(np.array([int(time.time())]))[0]) if day is None else day


# ----------------------------------------------------------------------------------------------------------
# Resolving a request: ids -> model indices, strategy


def resolve(
    catalog: Catalog,
    user_id: int | None,
    item_sequence: Sequence[int] | None,
    timestamps: Sequence[int] | None,
    demographics: tuple[int, ...],
    empty_day: int,
    reads_demographics: bool,
) -> Request:
    """One caller's request in model indices (engine module docstring: the rules). demographics: the user
    features' indices from user_feature_indices; empty_day: the day of history items without a timestamp or a known
    rating day; reads_demographics: the model has user tokens (without them a user known by demographics alone is a
    "popularity" one)."""
    user_index = user_index_of(catalog, user_id, any(demographics))
    known = catalog.user_features[user_index]
    features = tuple(int(given or stored) for given, stored in zip(demographics, known, strict=True))
    cold_movie_ids: list[int] = []
    if item_sequence is None:
        if timestamps is not None:
            raise InferenceError("timestamps describe item_sequence: pass both, or neither")
        events = catalog.history(user_index)
        items, days = catalog.history_items[events], catalog.history_days[events]
    else:
        movie_ids = as_id_array(item_sequence, "item_sequence")
        items = items_of(catalog, movie_ids)
        if timestamps is None:
            days = known_days(catalog, user_index, items, empty_day)
        else:
            days = day_of_year(as_timestamp_array(timestamps))
            if len(days) != len(items):
                raise InferenceError(f"timestamps has {len(days)} values for {len(items)} items in item_sequence")
        cold_movie_ids = movie_ids[items == PAD_INDEX].tolist()
        items, days = items[items != PAD_INDEX], days[items != PAD_INDEX]
    if user_index:
        strategy = PERSONALIZED
    elif len(items):
        strategy = SEQUENCE
    else:  # a model without user tokens cannot read demographics
        strategy = DEMOGRAPHICS if any(features) and reads_demographics else POPULARITY
    return Request(user_index, features, items, days, cold_movie_ids, strategy)


def resolve_batch(
    catalog: Catalog,
    user_ids: Sequence[int | None],
    item_sequences: Sequence[Sequence[int] | None] | None,
    timestamps: Sequence[Sequence[int] | None] | None,
    demographics: Sequence[Mapping[str, Any] | None] | None,
    empty_day: int,
    reads_demographics: bool,
) -> list[Request]:
    """resolve for each row of a batch (RecommendationEngine.score_batch)."""
    user_ids = batch_rows(user_ids, "user_ids")
    item_sequences, timestamps, demographics = (
        None if rows is None else batch_rows(rows, name)
        for rows, name in ((item_sequences, "item_sequences"), (timestamps, "timestamps"),
                           (demographics, "demographics"))
    )
    if item_sequences is not None and len(item_sequences) != len(user_ids):
        raise InferenceError(f"item_sequences has {len(item_sequences)} rows for {len(user_ids)} user_ids")
    if timestamps is not None and (item_sequences is None or len(timestamps) != len(user_ids)):
        raise InferenceError("timestamps need item_sequences, one row per user")
    if demographics is not None and len(demographics) != len(user_ids):
        raise InferenceError(f"demographics has {len(demographics)} rows for {len(user_ids)} user_ids")
    requests = []
    for row, user_id in enumerate(user_ids):
        fields = demographic_fields(None if demographics is None else demographics[row], row,
                                    catalog.user_feature_names)
        requests.append(resolve(
            catalog, user_id, None if item_sequences is None else item_sequences[row],
            None if timestamps is None else timestamps[row],
            user_feature_indices(catalog, fields), empty_day, reads_demographics,
        ))
    return requests


def known_user_ids(catalog: Catalog, user_ids: Any) -> list[int]:
    """A batch of UserIDs (batch_rows), each one the metadata knows."""
    user_ids = [as_id(user_id, "user_ids", UnknownUserError) for user_id in batch_rows(user_ids, "user_ids")]
    unknown = sorted(set(user_ids) - set(catalog.user_index))
    if unknown:
        raise UnknownUserError(f"user_ids: unknown UserID(s) {unknown[:10]}: not in the metadata's users")
    return user_ids


def user_index_of(catalog: Catalog, user_id: int | None, has_demographics: bool) -> int:
    if user_id is None:
        return 0
    user_id = as_id(user_id, "user_id", UnknownUserError)
    if user_id in catalog.user_index:
        return catalog.user_index[user_id]
    if has_demographics:
        return 0  # a new user described by their demographics
    raise UnknownUserError(
        f"unknown user_id {user_id}: not in the metadata's users; for a new user pass "
        f"{'/'.join(catalog.user_feature_names) or 'an item_sequence'}"
        f"{' or an item_sequence' if catalog.user_feature_names else ''} without a user_id"
    )


def user_feature_indices(catalog: Catalog, values: Mapping[str, Any]) -> tuple[int, ...]:
    """Model indices (0 = not given) of a user's features given by name (a new user's, or overrides of a known
    user's), in Catalog.user_feature_names order. ML-1M reads gender, age (years or a group label such as
    "25-34") and occupation (code or name) as demographic_indices does; any other dataset a categorical feature's
    value as its vocabulary writes it (text compared) and a bucketed feature's number."""
    values = {name: value for name, value in values.items() if value is not None}
    unknown = sorted(set(values) - set(catalog.user_feature_names), key=str)
    if unknown:
        raise InferenceError(f"{shown(unknown[0])} is not a user feature of this dataset; its user features: "
                             f"{', '.join(catalog.user_feature_names) or 'none'}")
    if catalog.schema["name"] == "ml-1m":
        return demographic_indices(catalog.vocabularies, **values)
    indices = []
    for feature in catalog.schema["users"]:
        if feature["name"] not in catalog.user_feature_names:
            continue
        value = values.get(feature["name"])
        if value is None:
            indices.append(0)
        elif feature["kind"] == "categorical":
            texts = [str(entry) for entry in feature["vocabulary"]]
            if str(value) not in texts:
                shown_values = ", ".join(texts[:10]) + (" ..." if len(texts) > 10 else "")
                raise InferenceError(f"{feature['name']} must be one of {shown_values}; got {shown(value)}")
            indices.append(texts.index(str(value)) + 1)
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not math.isfinite(number):
                raise InferenceError(f"{feature['name']} must be a number; got {shown(value)}")
            indices.append(int(bucket_index(feature["edges"], number)))
    return tuple(indices)


def demographic_indices(
    vocabularies: dict[str, Any], gender: str | None = None, age: int | str | None = None,
    occupation: int | str | None = None,
) -> tuple[int, int, int]:
    """Model indices (0 = not given) of a new ML-1M user's demographics, via the metadata's vocabularies."""
    genders, age_groups, occupations = (vocabularies[name] for name in ("genders", "age_groups", "occupations"))
    gender_index = age_index = occupation_index = 0
    if gender is not None:
        if not isinstance(gender, str) or gender.upper() not in genders[1:]:
            raise InferenceError(f"gender must be one of {', '.join(genders[1:])}, got {shown(gender)}")
        gender_index = genders.index(gender.upper())
    if age is not None:
        labels = [group["label"] for group in age_groups]
        if isinstance(age, str) and age in labels[1:]:
            age_index = labels.index(age)
        else:
            years = as_int(age, "age (years, or an age group such as '25-34')")
            if not 1 <= years <= 120:
                raise InferenceError(f"age must be 1..120 years, got {years}")
            # ML-1M's age codes are each group's lower bound: the group is the last code <= the age
            age_index = max((i for i, group in enumerate(age_groups[1:], 1) if group["age"] <= years), default=1)
    if occupation is not None:
        names = [entry["name"] for entry in occupations]
        if isinstance(occupation, str) and occupation in names[1:]:
            occupation_index = names.index(occupation)
        else:
            code = as_int(occupation, "occupation (ML-1M code or name)")
            codes = [entry["code"] for entry in occupations]
            if code not in codes[1:]:
                raise InferenceError(f"occupation must be an ML-1M code 0..{len(codes) - 2}, got {code}")
            occupation_index = codes.index(code)
    return gender_index, age_index, occupation_index


def items_of(catalog: Catalog, movie_ids: np.ndarray) -> np.ndarray:
    """Item indices of MovieIDs (0 for never-rated movies); unknown MovieIDs are an error."""
    in_range = (movie_ids >= 0) & (movie_ids < len(catalog.movie_row))
    known = np.zeros(len(movie_ids), dtype=bool)
    known[in_range] = catalog.movie_row[movie_ids[in_range]] >= 0
    if not known.all():
        unknown = sorted(set(movie_ids[~known].tolist()))
        raise UnknownItemError(f"unknown MovieID(s) {unknown[:10]}: not in movies.dat")
    return catalog.item_of_movie[movie_ids]


def warm_item(catalog: Catalog, movie_id: int) -> int:
    """Item index of a MovieID the model can score."""
    item = int(items_of(catalog, np.array([as_id(movie_id, "recommended_item_id", UnknownItemError)]))[0])
    if item == PAD_INDEX:
        raise ColdItemError(
            f"movie {movie_id} was never rated in the training data, so the model cannot score it; "
            "get_cold_item_recommendations ranks such movies by genre similarity"
        )
    return item


def known_days(catalog: Catalog, user_index: int, items: np.ndarray, empty_day: int) -> np.ndarray:
    """Day the user rated each item, else empty_day."""
    keys = user_index * catalog.item_vocab_size + items
    found = np.minimum(np.searchsorted(catalog.event_keys, keys), len(catalog.event_keys) - 1)
    rated = (catalog.event_keys[found] == keys) & (user_index > 0) & (items != PAD_INDEX)
    return np.where(rated, catalog.event_days[found], empty_day)


def warn_cold(requests: list[Request]) -> None:
    """One ColdItemWarning naming the never-rated movies of these histories, pointed at the engine's caller."""
    cold = sorted({movie_id for r in requests for movie_id in r.cold_movie_ids})
    if cold:
        warnings.warn(
            f"never-rated MovieID(s) {cold[:10]}{' ...' if len(cold) > 10 else ''} in the history: the model has "
            "no embedding for them and skips them", ColdItemWarning, stacklevel=3,
        )
