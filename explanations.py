"""Why a movie is recommended: what the engine measures (score drops, ranks, attention) and the sentence it says.

An explanation only calls influence what it measured: the score drop of the recommended movie when one history
item is deleted or one user token hidden, all variants scored in one batched forward pass. A new user's score adds
the sign-up prior, which depends on the number of ratings and on gender and age: it is held at the user's own in
every variant, so that a drop measures the model, not the prior's change with n. Attention is read from the same
model and shown beside, never as a cause.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from catalog import DEMOGRAPHICS, POPULARITY, SEQUENCE, Catalog, Request, movie_record
from data_processor import PAD_INDEX
from enhanced_model import EnhancedBERT4Rec, ModelConfig, user_token_names
from metrics import target_ranks
from scoring import ModelInputs, new_user_log_prior
from signup_prior import NewUserPrior, faded_weight

SAME_ERA_YEARS = 3  # release years this close to the history's median read as "the same era"
MIN_DRIVER_DROP = 0.05  # a sentence names a history item only if deleting it costs this much score (~5% odds)
EXPLANATION_MEASURES = {
    "score_drop": "score of the recommended movie (item head) minus its score with that history item deleted (older "
    "items slide into the window), or with that user token set to unknown; one batched forward pass. A new user's "
    "score is the model's log-probability plus the sign-up prior's term, held fixed: the drop is the model's",
    "rank": "1 + the number of other unseen movies that score at least as high (ties count against it, as in "
    "evaluation: metrics.target_ranks)",
    "rank_without": "its rank after that deletion or hiding",
    "attention": "last encoder layer, attention of the [MASK] position to that item, mean over heads; "
    "shown beside, not a measure of influence",
    "cross_attention": "weight of each user token in the [MASK] position's cross-attention, mean over heads",
}


# ----------------------------------------------------------------------------------------------------------
# What is measured: the request's variants, their ranks, the attention


def known_tokens(request: Request, config: ModelConfig) -> list[str]:
    """The user tokens the model reads for this request (identity, then the user features: ML-1M's gender, age,
    occupation), known ones only."""
    if not config.use_user_tokens:
        return []
    known = (request.user_index, *request.features)
    return [name for name, value in zip(user_token_names(config), known, strict=True) if value != PAD_INDEX]


def explanation_variants(request: Request, window_size: int, token_names: list[str],
                         config: ModelConfig) -> list[Request]:
    """The request itself, then once per window item (oldest first) with that item deleted, then once per known
    user token with that token hidden."""
    return [request, *_deletions(request, window_size),
            *(_hide_token(request, name, config) for name in token_names)]


def _deletions(request: Request, window_size: int) -> list[Request]:
    """The request once per item of the model's window (oldest first) with that item deleted: older items slide
    into the window."""
    return [
        dataclasses.replace(request, items=np.delete(request.items, i), days=np.delete(request.days, i))
        for i in range(len(request.items) - window_size, len(request.items))
    ]


def _hide_token(request: Request, name: str, config: ModelConfig) -> Request:
    """The request with user token `name` (identity or a user feature) set to unknown."""
    if name == "identity":
        return dataclasses.replace(request, user_index=0)
    features = list(request.features)
    features[user_token_names(config).index(name) - 1] = 0
    return dataclasses.replace(request, features=tuple(features))


def held_prior(catalog: Catalog, request: Request, item: int, prior: NewUserPrior) -> dict[str, Any] | None:
    """A new user's sign-up prior as the explanation holds it fixed: its weight w(n) and its term in the score of
    `item`; None for a request scored by the model alone (a known user, popularity, weight 0)."""
    if request.strategy not in (SEQUENCE, DEMOGRAPHICS) or not prior.weight:
        return None
    n = len(request.items)
    return {"weight": float(faded_weight(prior.weight, prior.fade, n, prior.steepness)),
            "score_term": float(new_user_log_prior(catalog, [request], prior)[0, item]), "held_fixed": True}


def display_ranks(scores: torch.Tensor, item: int) -> list[int]:
    """1-based rank of `item` in each row: metrics.target_ranks + 1, so ties count against it as in evaluation."""
    return (target_ranks(scores, torch.full((len(scores),), item, dtype=torch.long)) + 1).tolist()


@torch.no_grad()
def read_attention(model: EnhancedBERT4Rec, inputs: ModelInputs,
                   window_size: int) -> tuple[list[float | None], dict[str, float]]:
    """Last-layer self-attention of [MASK] to each window item, and its cross-attention per user token."""
    output = model(inputs.item_seq, inputs.days, **inputs.user, return_attention=True)
    last_layer = output.self_attention[-1][0, :, -1, :].mean(dim=0)  # over heads: (T,)
    self_attention = last_layer[-1 - window_size : -1].tolist() if window_size else []
    cross = {}
    if output.cross_attention is not None:
        cross = dict(zip(user_token_names(model.config), output.cross_attention[0, -1].tolist(), strict=True))
    return self_attention, cross


# ----------------------------------------------------------------------------------------------------------
# The explanation: the measured numbers as a dict


def measured_explanation(
    catalog: Catalog, user_id: int | None, request: Request, movie_id: int, scores: torch.Tensor,
    ranks: list[int], attention: tuple[list[float | None], dict[str, float]], window_size: int,
    token_names: list[str], signup_prior: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The explanation of movie_id from the scores of explanation_variants' rows (row 0 the request, then the
    deletions, then the hidden tokens; the movie is outside the history, so excluding seen movies leaves its
    column alone), their display_ranks, read_attention's attention and held_prior's signup_prior. Everything but
    the sentence."""
    target_scores = scores[:, catalog.item_of_movie[movie_id]]
    drops = (target_scores[0] - target_scores[1:]).tolist()
    self_attention, cross_attention = attention
    window_movie_ids = catalog.item_movie_ids[request.items[len(request.items) - window_size :]].tolist()
    window_movies = [movie_record(catalog, m) for m in window_movie_ids]
    window_rows, row = catalog.movie_row[window_movie_ids], catalog.movie_row[movie_id]
    return {
        "user_id": user_id,
        "strategy": request.strategy,
        "recommended": {**movie_record(catalog, movie_id), "score": target_scores[0].item(), "rank": ranks[0]},
        "drivers": _drivers(window_movies, drops[:window_size], ranks[1 : 1 + window_size], self_attention),
        "shared_genres": _shared_genres(catalog.movie_genres[row], catalog.movie_genres[window_rows],
                                        catalog.genre_names),
        "release_year": _year_relation(catalog.movies[movie_id]["year"], catalog.movie_years[window_rows]),
        "user_tokens": _user_tokens(token_names, cross_attention, drops[window_size:], ranks[1 + window_size :]),
        "signup_prior": signup_prior,
        "measures": dict(EXPLANATION_MEASURES),
    }


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


def _shared_genres(genre_multi_hot: np.ndarray, history_genre_multi_hot: np.ndarray,
                   genre_names: list[str]) -> dict[str, int]:
    """Genre (the preference feature's value) -> number of history movies (rows of history_genre_multi_hot) that
    share it with the movie, most shared first; genres no history movie shares are left out."""
    counts = (history_genre_multi_hot * genre_multi_hot).sum(axis=0)
    return {genre_names[g]: int(counts[g]) for g in np.argsort(-counts, kind="stable") if counts[g] > 0}


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


def popularity_explanation(movie: dict[str, Any], popularity: np.ndarray, item: int) -> dict[str, Any]:
    """The explanation of a "popularity" answer: the movie's number of training ratings and its place by them.

    The place is a standing, 1 + the number of movies rated more often, so movies with equal counts share the best
    place of their tie. Counts tie often (several movies can share the top count) and the popularity list breaks
    such ties in its own order: counting ties against the movie, as display_ranks does for model scores, would
    call the list's first movie 4th when four share the top.
    """
    count, rank = int(popularity[item]), 1 + int((popularity > popularity[item]).sum())
    return {
        "user_id": None,
        "strategy": POPULARITY,
        "recommended": {**movie, "score": float(count), "rank": rank},
        "drivers": [],
        "shared_genres": {},
        "release_year": _year_relation(movie["year"], np.array([])),
        "user_tokens": {},
        "signup_prior": None,
        "measures": {"score": "number of ratings in the training parts"},
        "sentence": f'Nothing is known about this user, so "{movie["title"]}" is suggested for its popularity: '
        f"{count} ratings in the training data, rank {rank}.",
    }


# ----------------------------------------------------------------------------------------------------------
# The sentence


def _titles(movies: list[dict[str, Any]]) -> str:
    return " and ".join(f'"{movie["title"]}"' for movie in movies)


def explanation_sentence(explanation: dict[str, Any], window_size: int, k: int = 10) -> str:
    """One plain-language sentence from the explanation's numbers: "We recommend ..." for a movie within the top
    k, "... is ranked 299th for you, ..." below it. Only measured score drops are called influence."""
    title = explanation["recommended"]["title"]
    parts = [_history_part(explanation["drivers"], window_size)]
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
    token_part = _user_token_part(explanation["user_tokens"])
    if token_part:
        parts.append(token_part)
    if explanation.get("signup_prior"):
        parts.append("score changes measured on the model's scores, the sign-up prior held fixed")
    rank = explanation["recommended"].get("rank", 1)
    opening = f'We recommend "{title}" ' if rank <= k else f'"{title}" is ranked {_ordinal(rank)} for you, '
    return opening + "; ".join(parts) + "."


def _history_part(drivers: list[dict[str, Any]], window_size: int) -> str:
    """The history items whose deletion costs at least MIN_DRIVER_DROP, or the window as a whole."""
    drivers = [d for d in drivers if d["score_drop"] >= MIN_DRIVER_DROP][:2]
    if len(drivers) == 2 and drivers[1]["score_drop"] < drivers[0]["score_drop"] / 2:
        drivers = drivers[:1]  # name a second item only when it matters about as much as the first
    if len(drivers) == 1:
        drop = drivers[0]["score_drop"]
        return f"mostly because you watched {_titles(drivers)} (without it, its score drops by {drop:.2f})"
    if drivers:
        drops = " and ".join(f"{d['score_drop']:.2f}" for d in drivers)
        return f"mostly because you watched {_titles(drivers)} (without each, its score drops by {drops})"
    if window_size:
        return (f"from your {window_size} most recent movies as a whole (deleting any one of them lowers its score "
                f"by less than {MIN_DRIVER_DROP})")
    return "from your profile alone (no viewing history)"


def _user_token_part(user_tokens: dict[str, dict[str, Any]]) -> str | None:
    """The user token whose hiding costs most, when that is at least MIN_DRIVER_DROP; attention only beside it."""
    drops = {name: t["score_drop"] for name, t in user_tokens.items() if t["score_drop"] >= MIN_DRIVER_DROP}
    if not drops:
        return None
    name = max(drops, key=drops.get)
    label = {"identity": "your own taste profile", "age": "your age group"}.get(name, f"your {name}")
    attention = user_tokens[name].get("cross_attention")
    beside = f"; attention to it: {attention:.0%}" if attention is not None else ""
    return (f"of what we know about you, {label} weighed most (hiding it lowers the score by "
            f"{drops[name]:.2f}{beside})")


def _ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 299th."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
