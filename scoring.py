"""Scoring resolved requests with the model: the trainer's input layout and scoring function, the sign-up prior for
new users, popularity for users the model knows nothing about, and the best-first records a caller sees."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from catalog import DEMOGRAPHICS, POPULARITY, SEQUENCE, Catalog, Request, movie_record, own_lists, signup_groups
from data_processor import scoring_input
from enhanced_model import EnhancedBERT4Rec, ModelConfig, exclude_seen, score_last_position
from signup_prior import NewUserPrior, signup_log_prior


@dataclass
class ModelInputs:
    item_seq: torch.Tensor
    days: torch.Tensor
    user: dict[str, torch.Tensor]
    seen_offsets: np.ndarray
    seen_items: np.ndarray


def model_inputs(requests: list[Request], config: ModelConfig, empty_day: int, device: torch.device) -> ModelInputs:
    """data_processor.scoring_input's layout: the newest seq_length - 1 items + [MASK] with the newest day; the user
    inputs by name (user_idx and config.user_features)."""
    seq_length, mask_index = config.seq_length, config.mask_index
    lengths = np.array([len(r.items) for r in requests], dtype=np.int64)
    ends = np.cumsum(lengths)
    items = np.concatenate([np.zeros(0, np.int64), *(r.items for r in requests)]).astype(np.int64)
    days = np.concatenate([np.zeros(0, np.int64), *(r.days for r in requests)]).astype(np.int64)
    item_seq, day_seq = scoring_input(items, days, ends - lengths, ends, seq_length, mask_index, empty_day=empty_day)
    features = np.array([(r.user_index, *r.features) for r in requests], dtype=np.int64)
    feature_columns = torch.from_numpy(features).T.to(device)
    names = ("user_idx", *(feature["name"] for feature in config.user_features))
    user = dict(zip(names, feature_columns, strict=True))
    return ModelInputs(torch.from_numpy(item_seq).to(device), torch.from_numpy(day_seq).to(device), user,
                       np.concatenate([[0], ends]), items)


def score_and_hidden(
    model: EnhancedBERT4Rec, catalog: Catalog, requests: list[Request], filter_seen: bool, batch_size: int,
    empty_day: int, prior: NewUserPrior, prior_of: Request | None = None, bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(requests), num_items + 2) scores on the CPU, batch_size requests per forward pass, and the hidden row
    each was read from (B, hidden; readout_rows). Popularity rows get training-part counts and, not being read by
    the model, NaN hidden rows; new users' rows add the sign-up prior to the model's log probabilities: each row's
    own, or with prior_of every row that of prior_of (an explanation's variants, the prior held fixed). bf16: the
    encoder in bf16 (enhanced_model.score_last_position)."""
    config, device = model.config, next(model.parameters()).device
    chunks, hidden_rows = [], []
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        popular = [row for row, r in enumerate(batch) if r.strategy == POPULARITY]
        if len(popular) == len(batch):
            chunks.append(torch.from_numpy(catalog.popularity).expand(len(batch), -1).clone())
            hidden_rows.append(torch.full((len(batch), config.hidden_size), math.nan))
            continue
        inputs = model_inputs(batch, config, empty_day, device)
        scores, hidden, _ = score_last_position(model, inputs.item_seq, inputs.days, inputs.user, bf16,
                                               states=False)
        # by strategy, not user_index: a known user whose identity an explanation hides stays "personalized"
        new_users = [row for row, r in enumerate(batch) if r.strategy in (SEQUENCE, DEMOGRAPHICS)]
        if new_users and prior.weight:
            rows = torch.tensor(new_users, device=scores.device)
            held = [batch[row] if prior_of is None else prior_of for row in new_users]
            log_prior = new_user_log_prior(catalog, held, prior)
            scores[rows] = scores[rows].log_softmax(dim=-1) + log_prior.to(scores.device, scores.dtype)
        if filter_seen:
            exclude_seen(scores, inputs.seen_offsets, inputs.seen_items)
        scores, hidden = scores.cpu(), hidden.float().cpu()
        scores[popular] = torch.from_numpy(catalog.popularity)
        hidden[popular] = math.nan
        chunks.append(scores)
        hidden_rows.append(hidden)
    return torch.cat(chunks), torch.cat(hidden_rows)


def new_user_log_prior(catalog: Catalog, requests: list[Request], prior: NewUserPrior) -> torch.Tensor:
    """(len(requests), vocabulary) w(n) * log of the sign-up prior of each new user (signup_prior.py)."""
    n = np.array([len(r.items) for r in requests])
    features = np.array([r.features for r in requests], dtype=np.int64).reshape(len(requests), -1)
    groups = signup_groups(catalog, features)
    return torch.from_numpy(signup_log_prior(catalog.signup, n, groups[:, 0], groups[:, 1], prior))


@torch.no_grad()
def nonfinite_part(model: EnhancedBERT4Rec) -> str | None:
    """The first part of the model that is not finite, None when all are: a weight (parameter or buffer) by name,
    else the scores, hidden rows or predicted ratings of a probe batch, a user with no history and a known user
    with a short one (a NaN or inf there would serve short or empty lists without an error)."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"weight {name}"
    config, device = model.config, next(model.parameters()).device
    short = np.arange(1, min(3, config.num_items) + 1)
    unknown = (0,) * len(config.user_features)
    probe = [Request(0, unknown, short[:0], short[:0], [], POPULARITY),
             Request(1, (1,) * len(unknown), short, np.ones_like(short), [], POPULARITY)]
    inputs = model_inputs(probe, config, 1, device)
    scores, hidden, _ = score_last_position(model, inputs.item_seq, inputs.days, inputs.user, states=False)
    parts = {"scores": scores[:, 1:-1], "hidden rows": hidden}
    if model.rating_head is not None:
        items = torch.ones((2, 1), dtype=torch.long)
        parts["predicted ratings"] = torch.from_numpy(predicted_ratings(model, hidden, items, inputs.user["user_idx"]))
    return next((f"{name} of a probe batch" for name, part in parts.items() if not bool(torch.isfinite(part).all())),
                None)


def exclude_history(scores: torch.Tensor, requests: list[Request]) -> None:
    """Set, in place, each row's scores of its request's whole history to -inf."""
    lengths = [len(r.items) for r in requests]
    exclude_seen(scores, np.concatenate([[0], np.cumsum(lengths)]), np.concatenate([r.items for r in requests]))


@torch.no_grad()
def predicted_ratings(model: EnhancedBERT4Rec, hidden: torch.Tensor, items: torch.Tensor,
                      user_index: torch.Tensor) -> np.ndarray:
    """Rating head's 1-5 prediction (B, k) of items (B, k) from each row's [MASK] hidden state (B, H); NaN for
    rows without one (popularity). The whole array is NaN when the checkpoint has no rating head."""
    if model.rating_head is None:
        return np.full(tuple(items.shape), np.nan)
    device = next(model.parameters()).device
    k = items.size(1)
    rows = hidden.repeat_interleave(k, dim=0).to(device)
    users = user_index.repeat_interleave(k).to(device)
    predicted = model.predict_rating(rows, items.reshape(-1).to(device), users).float().cpu()
    return predicted.reshape(items.shape).numpy()


def top_k_records(model: EnhancedBERT4Rec, catalog: Catalog, scores: torch.Tensor, hidden: torch.Tensor, k: int,
                  requests: list[Request], min_rating: float | None = None) -> list[list[dict[str, Any]]]:
    """Best-first records per row; with a rating head each carries predicted_rating (1-5, None where the
    model did not read the row). min_rating drops movies predicted below it: the candidates widen (k, 4k,
    16k, ... movies by score) until k remain or every movie was looked at."""
    user_index = torch.tensor([r.user_index for r in requests], dtype=torch.long)
    width = k
    while True:
        values, items = scores.topk(min(width, scores.size(1)), dim=1)
        ratings = predicted_ratings(model, hidden, items, user_index)
        keep = values > -torch.inf
        if min_rating is not None:
            keep &= torch.from_numpy(~(ratings < min_rating))  # NaN (popularity rows) is kept
        if min_rating is None or width >= scores.size(1) or bool((keep.sum(dim=1) >= k).all()):
            break
        width *= 4
    # Python lists read once, and each listed movie's record made once: per-element tensor reads and a record per
    # row took about 1 s of ML-1M's all-users top 10 (60,400 records)
    movie_ids, values, ratings = catalog.item_movie_ids[items.numpy()].tolist(), values.tolist(), ratings.tolist()
    records: dict[int, dict[str, Any]] = {}
    with_rating = model.rating_head is not None
    answers = []
    for row, (request, row_keep) in enumerate(zip(requests, keep.tolist(), strict=True)):
        listings = []
        for rank, j in enumerate([j for j, listed in enumerate(row_keep) if listed][:k], 1):
            movie_id = movie_ids[row][j]
            record = records.get(movie_id)
            if record is None:
                record = records[movie_id] = movie_record(catalog, movie_id)
            listing = {"rank": rank, **own_lists(record), "score": values[row][j], "strategy": request.strategy}
            if with_rating:
                listing["predicted_rating"] = None if math.isnan(ratings[row][j]) else ratings[row][j]
            listings.append(listing)
        answers.append(listings)
    return answers
