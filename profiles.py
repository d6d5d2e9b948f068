"""What a history looks like: a known user's profile (demographics, genre mix, newest movies), and the never-rated
movies closest to a history's genres and era.

Never-rated movies (in movies.dat, not in the model's vocabulary) have no embedding, so the model cannot score
them: they are ranked among themselves by
    0.8 * cosine(genre multi-hot, the history's mean genre multi-hot) + 0.2 * exp(-|year - median year| / 10),
a similarity in [0, 1] that is not on the model's scale, so they are never mixed into the model's ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from catalog import GENRE_SIMILARITY, Catalog, Request, movie_record
from data_processor import PAD_INDEX
from enhanced_model import EnhancedBERT4Rec
from inference_inputs import InferenceError, UnknownItemError, as_id_array
from scoring import ModelInputs

COLD_GENRE_WEIGHT, COLD_YEAR_WEIGHT, COLD_YEAR_SCALE = 0.8, 0.2, 10.0


def user_profile(catalog: Catalog, user_id: int,
                 predicted_genres: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A known user's features (ML-1M: demographics) and history summary (RecommendationEngine.get_user_profile);
    the "genres" are the preference feature's values (ML-1M: genres); predicted_genres:
    predicted_top_genres' answer, None without a preference head."""
    user = catalog.users[user_id]
    events = catalog.history(catalog.user_index[user_id])
    items, ratings = catalog.history_items[events], catalog.history_ratings[events]
    genre_counts = catalog.movie_genres[catalog.item_movie_rows[items - 1]].sum(axis=0)
    shares = genre_counts / max(genre_counts.sum(), 1.0)
    top = [int(g) for g in np.argsort(-shares, kind="stable")[:5] if shares[g] > 0]
    if catalog.schema["name"] == "ml-1m":
        described = {name: user[name] for name in ("gender", "age", "age_group", "occupation_code", "occupation")}
    else:  # each user feature by its name, as the dataset writes it
        described = {feature["name"]: user[feature["name"]] for feature in catalog.schema["users"]}
    return {
        "user_id": user_id,
        **described,
        "num_ratings": len(items),
        "mean_rating": round(float(np.mean(ratings)), 3) if catalog.schema["has_ratings"] else None,
        "top_genres": [{"genre": catalog.genre_names[g], "share": round(float(shares[g]), 3)} for g in top],
        **({} if predicted_genres is None else {"predicted_top_genres": predicted_genres}),
        "recent_movies": [
            {"movie_id": movie_id, "title": catalog.movies[movie_id]["title"]}
            for movie_id in catalog.item_movie_ids[items[::-1][:5]].tolist()
        ],
    }


@torch.no_grad()
def predicted_top_genres(model: EnhancedBERT4Rec, inputs: ModelInputs, genre_names: list[str]) -> list[dict[str, Any]]:
    """The 5 largest shares of the preference head's genre mix for one user's inputs (the newest seq_length - 1
    movies read as at inference); the model must have that head."""
    hidden = model(inputs.item_seq, inputs.days, **inputs.user).hidden
    mix = model.predict_preference(hidden, inputs.item_seq).float().softmax(dim=-1)[0].cpu().numpy()
    top = np.argsort(-mix, kind="stable")[:5]
    return [{"genre": genre_names[g], "share": round(float(mix[g]), 3)} for g in top]


def cold_item_records(catalog: Catalog, request: Request, k: int, filter_seen: bool,
                      movie_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The k never-rated movies closest to the request's history (cold items included) by the module docstring's
    similarity, best first (RecommendationEngine.get_cold_item_recommendations); an empty history uses the genre
    mix of all training ratings and no year term. movie_ids: rank only these MovieIDs."""
    history_rows = np.concatenate([
        catalog.item_movie_rows[request.items - 1],
        catalog.movie_row[np.array(request.cold_movie_ids, dtype=np.int64)],
    ])
    profile = catalog.movie_genres[history_rows].mean(axis=0) if len(history_rows) else catalog.training_genre_mix
    years = catalog.movie_years[history_rows]
    reference_year = np.nanmedian(years) if np.isfinite(years).any() else np.nan
    cold_rows = np.flatnonzero(catalog.item_of_movie[catalog.movie_ids] == PAD_INDEX)
    if movie_ids is not None:
        candidates = list(movie_ids) if isinstance(movie_ids, (set, frozenset)) else movie_ids  # order is not used
        cold_rows = _candidate_rows(catalog, as_id_array(candidates, "movie_ids"), cold_rows)
    if filter_seen:
        cold_rows = np.setdiff1d(cold_rows, history_rows)
    genres = catalog.movie_genres[cold_rows]
    norms = np.linalg.norm(genres, axis=1) * np.linalg.norm(profile)
    similarity = genres @ profile / np.maximum(norms, 1e-12)
    proximity = np.nan_to_num(np.exp(-np.abs(catalog.movie_years[cold_rows] - reference_year) / COLD_YEAR_SCALE))
    scores = COLD_GENRE_WEIGHT * similarity + COLD_YEAR_WEIGHT * proximity
    order = np.argsort(-scores, kind="stable")[:k]
    return [
        {
            "rank": rank,
            **movie_record(catalog, int(catalog.movie_ids[cold_rows[i]])),
            "score": float(scores[i]),
            "strategy": GENRE_SIMILARITY,
            "genre_similarity": float(similarity[i]),
            "year_proximity": float(proximity[i]),
            "matched_genres": [catalog.genre_names[g] for g in np.flatnonzero(genres[i] * profile)],
        }
        for rank, i in enumerate(order.tolist(), start=1)
    ]


def _candidate_rows(catalog: Catalog, movie_ids: np.ndarray, cold_rows: np.ndarray) -> np.ndarray:
    """Rows (of the movie table) of movie_ids, all of them never-rated movies, in cold_rows' order."""
    if not len(movie_ids):
        raise InferenceError("movie_ids is empty: pass the never-rated MovieIDs to rank, or None for all of them")
    unknown = [m for m in movie_ids.tolist() if m not in catalog.movies]
    if unknown:
        raise UnknownItemError(f"movie_ids: unknown MovieID(s) {unknown[:10]}: not in the metadata's movies")
    rows = catalog.movie_row[movie_ids]
    warm = movie_ids[~np.isin(rows, cold_rows)].tolist()
    if warm:
        raise InferenceError(f"movie_ids: MovieID(s) {warm[:10]} have an embedding: get_recommendations ranks them")
    return cold_rows[np.isin(cold_rows, rows)]
