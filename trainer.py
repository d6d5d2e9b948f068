"""Multi-task training of EnhancedBERT4Rec on MovieLens 1M.

    python trainer.py                                   # seed defaults, downloads ML-1M into ./ml-1m
    python trainer.py --data_dir path/to/ml-1m          # an existing ml-1m folder or ml-1m.zip
    torchrun --nproc_per_node 2 trainer.py ...          # distributed data parallel (gloo on CPU, nccl on GPU)

One loop, in plain sight: windows -> masking -> four weighted losses -> AdamW with warmup and decay ->
validation NDCG@10 (full ranking, docs/EVALUATION.md) -> early stopping and checkpoints -> test
metrics from the best-validation checkpoint, written to results.json beside it.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # refuse bad flags before the seconds torch takes to import (bench_preflight.py)
    import signal

    from train_config import interrupted_while_starting, preflight

    signal.signal(signal.SIGINT, interrupted_while_starting)  # Ctrl-C during the imports: one line, not a traceback
    preflight(sys.argv[1:])

import ctypes
import io
import json
import math
import os
import platform
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from data_processor import (
    DataError,
    EvalInputs,
    SequenceData,
    atomic_file,
    eval_inputs,
    load_dataset,
    mask_index,
    save_metadata,
    training_part,
)
from enhanced_model import (
    CHECKPOINT_FORMAT,
    CheckpointFileError,
    EnhancedBERT4Rec,
    ModelConfig,
    PreferenceHead,
    RatingHead,
    exclude_seen,
    fields_digest,
    model_from_checkpoint,
    pick_device,
    preference_loss,
    preference_top_k_overlap,
    read_checkpoint,
    score_last_position,
)
from metrics import ranking_metrics, target_ranks
from model_config import MODEL_FLAGS
from plots import plot_training_curves
from train_config import (
    NEW_USER_MAX_EVENTS,
    RUN_FILES,
    TASKS,
    ConfigError,
    TrainConfig,
    TrainingError,
    parse_args,
    validate_config,
)

# Steps between reads of the running losses: each read makes the CPU wait for the GPU, so reading every step
# keeps a GPU from running ahead of Python.
LOSS_SYNC_STEPS = 20


# ----------------------------------------------------------------------------------------------------
# Configuration -> model


def build_model_config(config: TrainConfig, data: SequenceData) -> ModelConfig:
    """The network the flags describe, on this data's items, users and declared features: the sizes and switches are
    the model flags TrainConfig inherits (model_config.ModelFlags); heads of tasks with weight 0 are not built at
    all. `config` is what fit_to_data left of the flags."""
    return ModelConfig(num_items=data.num_items, num_users=data.num_users,
                       item_features=_network_features(data.item_features),
                       user_features=_network_features(data.user_features), preference_feature=data.preference_feature,
                       **{name: getattr(config, name) for name in MODEL_FLAGS},
                       use_rating_head=config.rating_prediction_weight > 0,
                       use_preference_head=config.user_preference_weight > 0)


def _network_features(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the network needs of each feature declaration: its name, kind and size (not its vocabulary)."""
    return [{key: feature[key] for key in ("name", "kind", "size")} for feature in features]


def fit_to_data(config: TrainConfig, data: SequenceData) -> tuple[TrainConfig, list[str]]:
    """The flags with the parts this dataset cannot feed switched off, and one line per part saying what and why:
    item features without item features, user tokens without user features, the rating task without ratings, the
    preference task without a multi-valued item feature; and the sampled item loss where the catalogue has no more
    items than --num_negatives (the full softmax is then exact and no dearer). ML-1M has everything: nothing changes
    there."""
    off: dict[str, Any] = {}
    notes = []
    if config.use_item_side_info and not data.item_features:
        off |= {"use_item_side_info": False, "item_side_output": False}
        notes.append("the items have no features: the model trains without item side information")
    if config.use_user_tokens and not data.user_features:
        off["use_user_tokens"] = False
        notes.append("the users have no features: the model trains without user tokens and cross-attention")
    if config.rating_prediction_weight > 0 and not data.has_ratings:
        off["rating_prediction_weight"] = 0.0
        notes.append("the interactions carry no ratings: the rating task and head are off")
    if config.user_preference_weight > 0 and not data.preference_feature:
        off["user_preference_weight"] = 0.0
        notes.append("no item feature is multi-valued (like genres): the user-preference task and head are off")
    if config.item_loss == "sampled" and config.num_negatives >= data.num_items:
        off["item_loss"] = "full"
        notes.append(f"--num_negatives {config.num_negatives} is not fewer than the {data.num_items} items: the full "
                     "softmax is exact and no dearer here, so the item loss is the full softmax (--num_negatives "
                     f"below {data.num_items} keeps the sampled one)")
    if not off:
        return config, []
    adjusted = replace(config, **off)
    adjusted.defaults = config.defaults
    return adjusted, [f"note: {note}" for note in notes]


# ----------------------------------------------------------------------------------------------------
# Metrics (docs/EVALUATION.md): the ranks and HR/NDCG are metrics.py's; the baselines beside them


def fit_bias_baseline(users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                      reg: float = 10.0, iterations: int = 10) -> tuple[float, np.ndarray, np.ndarray]:
    """Regularised user + item bias model r ~ mu + b_u + b_i by alternating least squares (an id without
    ratings, such as the padding id 0, gets bias 0)."""

    def shrunk_mean(index: np.ndarray, residual: np.ndarray, size: int) -> np.ndarray:
        denominator = np.bincount(index, None, size) + reg
        return np.divide(np.bincount(index, residual, size), denominator, out=np.zeros(size), where=denominator > 0)

    ratings = ratings.astype(np.float64)
    mu = ratings.mean()
    user_bias = np.zeros(users.max() + 1)
    item_bias = np.zeros(items.max() + 1)
    for _ in range(iterations):
        item_bias = shrunk_mean(items, ratings - mu - user_bias[users], len(item_bias))
        user_bias = shrunk_mean(users, ratings - mu - item_bias[items], len(user_bias))
    return mu, user_bias, item_bias


def training_events(data: SequenceData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, rating) of every training-part event (data_processor.training_part)."""
    lengths = np.diff(data.seq_offsets)
    users = np.repeat(np.arange(len(lengths)), lengths)
    keep = training_part(data.seq_offsets)
    return users[keep], data.seq_items[keep], data.seq_ratings[keep]


# ----------------------------------------------------------------------------------------------------
# Batches: pre-made tensors, vectorised masking


def user_features(data_tensors: dict[str, torch.Tensor], users: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's user inputs of these user indices: user_idx and each user feature by its name."""
    return {"user_idx": users} | {name[len("user:"):]: values[users] for name, values in data_tensors.items()
                                  if name.startswith("user:")}


def mask_random_items(item_seq: torch.Tensor, mask_prob: float, mask_token: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT4Rec cloze masking: each real position becomes [MASK] with probability mask_prob.

    A row that drew no mask gets its newest position masked, so every row trains the item head.
    """
    real = item_seq != 0
    masked = (torch.rand(item_seq.shape, generator=generator, device=item_seq.device) < mask_prob) & real
    masked[:, -1] |= ~masked.any(dim=1)
    return item_seq.masked_fill(masked, mask_token), masked


def crop_windows(window: dict[str, torch.Tensor], crop_prob: float,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each row (right-aligned, left-padded), with probability crop_prob, loses its newest k events, k uniform in
    1..length-2, and is right-aligned again: a random earlier event becomes the newest one, at least one event of
    context stays. Every tensor in `window` (items, days, ratings: (B, T)) is cut the same way.
    """
    items = window["items"]
    length = (items != 0).sum(dim=1)
    rolls = torch.rand(items.shape[0], generator=generator, device=items.device)
    cut = (torch.rand(items.shape[0], generator=generator, device=items.device) < crop_prob) & (length >= 3)
    return drop_newest(window, torch.where(cut, 1 + (rolls * (length - 2)).long(), 0))  # rolls < 1: <= length - 2


def drop_newest(window: dict[str, torch.Tensor], drop: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each row without its newest drop[row] events, right-aligned again (left-padded with 0)."""
    source = torch.arange(window["items"].shape[1], device=drop.device) - drop[:, None]  # new j <- old j - drop
    before_start = source < 0
    return {name: tensor.gather(1, source.clamp(min=0)).masked_fill(before_start, 0)
            for name, tensor in window.items()}


def new_user_rows(data_tensors: dict[str, torch.Tensor], rows: torch.Tensor, prob: float,
                  generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The windows of `rows`, a `prob` share of them replaced by their user's first n events (n uniform in
    1..NEW_USER_MAX_EVENTS, from the user's oldest window): what a new user's first ratings look like. Returns the
    windows and which rows were replaced."""
    users = data_tensors["window_users"][rows]
    chosen = torch.rand(rows.shape, generator=generator, device=rows.device) < prob
    n = torch.randint(1, NEW_USER_MAX_EVENTS + 1, rows.shape, generator=generator, device=rows.device)
    rows = torch.where(chosen, data_tensors["user_first_window"][users], rows)
    window = {name: data_tensors[f"window_{name}"][rows] for name in ("items", "days", "ratings")}
    length = (window["items"] != 0).sum(dim=1)
    return drop_newest(window, torch.where(chosen, (length - n).clamp(min=0), 0)), chosen


def mask_last_item(item_seq: torch.Tensor, day_of_year: torch.Tensor,
                   mask_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-item rows of training windows in data_processor.scoring_input's layout (the layout every score at
    inference reads): the newest position is [MASK] and carries the previous event's day."""
    next_seq = item_seq.clone()
    next_seq[:, -1] = mask_token
    next_days = day_of_year.clone()
    next_days[:, -1] = torch.where(day_of_year[:, -2] > 0, day_of_year[:, -2], day_of_year[:, -1])
    return next_seq, next_days


class MultiTaskObjective(nn.Module):
    """The weighted sum of the four task losses; wrapping it (not the bare model) keeps DDP in control.

    A task with weight 0 is skipped entirely: no forward pass, no head.
    """

    def __init__(self, model: EnhancedBERT4Rec, task_weights: dict[str, float], row_bucket: int = 0,
                 num_negatives: int = 0, generator: torch.Generator | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.task_weights = task_weights
        self.row_bucket = row_bucket
        self.num_negatives = num_negatives  # 0: the full softmax; > 0: the sampled one, negatives from generator
        self.generator = generator
        self.label_smoothing = label_smoothing  # the full softmax's (softmax_nll)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One encoder pass over the masked windows; every task reads its rows from it.

        The positions in batch["masked"] train item_prediction (cloze: [MASK]ed positions; causal: every position
        with a successor); with next_item on, the newest position (always [MASK]: batches made with make_batch's
        mask_last) trains next_item. Each position predicts batch["targets"] (its own item; causal: the next one).
        Both tasks share one item-head call; the rating task reads the same rows with their target items, the
        preference task the pooled window. With row_bucket > 0 those rows are padded (repeats of the first one, no
        loss, no gradient) to a multiple of row_bucket, so the logits come in a few sizes whatever the number of
        targets (see target_index).
        """
        losses: dict[str, torch.Tensor] = {}
        weights = self.task_weights
        if batch["mask_last"] != (weights["next_item"] > 0):
            raise ValueError(f"batches made with mask_last={batch['mask_last']} do not fit next_item weight "
                             f"{weights['next_item']}: mask_last must be on exactly when the next-item task is")
        item_seq = batch["masked_seq"]
        index, real, next_rows = self.loss_positions(batch)
        targets = batch["targets"].flatten()[index]
        negatives = log_q = None
        if self.num_negatives > 0:
            negatives, log_q = draw_negatives(targets[real], self.model.config.num_items, self.num_negatives,
                                              self.generator)
        # Every item row of the step in one lookup (the windows' items, the targets, the negatives): each lookup's
        # backward writes a gradient the size of the whole item table, which dominates the step's growth with the
        # catalogue.
        looked_up = self.model.item_embedding(torch.cat([item_seq.flatten(), targets] + (
            [negatives] if negatives is not None else [])))
        window_rows, output_rows = looked_up[:item_seq.numel()], looked_up[item_seq.numel():]  # targets, negatives
        hidden = self.model(item_seq, batch["days"], item_embeds=window_rows.view(*item_seq.shape, -1),
                            **batch["user"]).hidden
        rows = hidden.flatten(0, 1)[index]
        nll = self.item_nll(rows, targets, real, None if negatives is None else (negatives, log_q, output_rows))
        if weights["item_prediction"] > 0:
            losses["item_prediction"] = masked_mean(nll, real & ~next_rows)
        if weights["next_item"] > 0:
            losses["next_item"] = masked_mean(nll, next_rows)
        if weights["rating_prediction"] > 0:
            users = batch["user"]["user_idx"].unsqueeze(1).expand_as(item_seq).flatten()[index]
            predicted = self.model.predict_rating(rows, targets, users, output_rows[:len(targets)]).float()
            true = batch["target_ratings"].flatten()[index].float()
            losses["rating_prediction"] = masked_mean((predicted - true).square(), real)
        if weights["user_preference"] > 0:
            logits = self.model.predict_preference(hidden, item_seq)
            losses["user_preference"] = preference_loss(logits.float(), batch["genre_profile"])
        losses["total"] = sum(weights[task] * loss for task, loss in losses.items())
        return losses

    def loss_positions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The flat (B*T) positions the item losses read (target_index of item_prediction's positions and, with
        next_item on, each window's newest one), which of them are real, and which are next_item's."""
        weights = self.task_weights
        is_cloze = batch["masked"] if weights["item_prediction"] > 0 else torch.zeros_like(batch["masked"])
        is_next = torch.zeros_like(is_cloze)
        if weights["next_item"] > 0:
            is_next[:, -1] = True
        index, real = target_index(is_cloze | is_next, self.row_bucket)
        return index, real, is_next.flatten()[index] & real

    def item_nll(self, rows: torch.Tensor, targets: torch.Tensor, real: torch.Tensor,
                 sample: tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
                 ) -> torch.Tensor:
        """The item losses' cross-entropy of each row against its target: over every item, or with num_negatives >
        0 over the target and the step's shared negatives (draw_negatives, sampled_softmax_nll). Computed in fp32
        whatever the autocast. sample: the negatives and log q already drawn, with the item_embedding rows of
        targets then negatives; without it they are drawn and looked up here."""
        if self.num_negatives == 0:
            return softmax_nll(self.model.real_item_logits(rows), targets - 1, label_smoothing=self.label_smoothing)
        if sample is None:
            negatives, log_q = draw_negatives(targets[real], self.model.config.num_items, self.num_negatives,
                                              self.generator)
            item_embeds = None
        else:
            negatives, log_q, item_embeds = sample
        target_logits, negative_logits = self.model.sampled_item_logits(rows, targets, negatives, item_embeds)
        return sampled_softmax_nll(target_logits.float(), negative_logits, log_q(targets), log_q(negatives),
                                   negatives.unsqueeze(0) == targets.unsqueeze(1))


def softmax_nll(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """The cross-entropy of each row of logits (R, C) against its target column, (R,): F.cross_entropy(logits.float(),
    targets, reduction="none", label_smoothing=label_smoothing), computed in fp32 whatever logits' dtype by
    _SoftmaxNLL. chunk_rows: the rows each element-wise pass covers at a time (softmax_chunk_rows by default); any
    value >= 1 gives the same numbers."""
    if chunk_rows is None:
        chunk_rows = softmax_chunk_rows(logits)
    elif chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 (or None for softmax_chunk_rows), got {chunk_rows}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return _SoftmaxNLL.apply(logits, targets, chunk_rows, label_smoothing)


SOFTMAX_CHUNK_ELEMENTS = 1 << 18  # 1 MB of fp32 scores: a chunk's passes stay in a core's L2 cache


def softmax_chunk_rows(logits: torch.Tensor) -> int:
    """Rows a chunk of _SoftmaxNLL's passes: on a CPU as many as fit SOFTMAX_CHUNK_ELEMENTS (at least 4, to bound
    the passes' Python overhead at large catalogues); elsewhere every row at once (a GPU gains nothing from it)."""
    if logits.device.type != "cpu":
        return max(1, logits.size(0))
    return max(4, SOFTMAX_CHUNK_ELEMENTS // max(1, logits.size(1)))


class _SoftmaxNLL(torch.autograd.Function):
    """softmax_nll with one (R, C) fp32 buffer forward and one backward, each written in chunks of rows.

    F.cross_entropy on fp32 logits writes the log-softmax forward, then a zero-filled (R, C) gradient for the target
    column and the log-softmax's gradient backward; under bf16 autocast a fp32 copy of the logits comes first. Here
    the shifted exponentials are written once (from the logits as they are, bf16 included), kept for the backward,
    and the gradient is one scaled copy of them, written in the logits' dtype, less 1 at each target:
    d nll / d s_j = p_j - [j = target]. Each pass (copy, shift, exponential, sum; scale and cast) runs over a chunk
    of rows small enough to stay in cache, not over all R rows in turn: on a CPU the unchunked passes wait on memory
    (docs/RESULTS.md, benchmarks). The chunks change no number: every operation is row by row.

    Label smoothing e targets (1 - e) at the row's item and e / C at every item: the loss is logsumexp(s) -
    (1 - e) s_target - e mean(s), and its gradient p_j - (1 - e) [j = target] - e / C. It adds one pass a chunk each
    way (the row's mean forward, the constant backward); e = 0 runs the passes above alone.
    """

    @staticmethod
    def forward(ctx, logits, targets, chunk_rows, label_smoothing):
        precision = torch.promote_types(logits.dtype, torch.float32)  # bf16 and fp16 logits: fp32
        weights = torch.empty(logits.shape, dtype=precision, device=logits.device)
        shift = torch.empty(logits.size(0), dtype=precision, device=logits.device)
        total, mean = torch.empty_like(shift), torch.empty_like(shift)
        for start in range(0, logits.size(0), chunk_rows):
            part = slice(start, start + chunk_rows)
            chunk = weights[part].copy_(logits[part])
            if label_smoothing:
                torch.mean(chunk, 1, out=mean[part])
            torch.amax(chunk, 1, out=shift[part])
            torch.sum(chunk.sub_(shift[part].unsqueeze(1)).exp_(), 1, out=total[part])
        ctx.save_for_backward(weights, total, targets)
        ctx.logits_dtype, ctx.chunk_rows, ctx.label_smoothing = logits.dtype, chunk_rows, label_smoothing
        at_targets = logits.gather(1, targets.unsqueeze(1)).squeeze(1).to(precision)
        if label_smoothing:
            return shift + total.log() - (1 - label_smoothing) * at_targets - label_smoothing * mean
        return shift + total.log() - at_targets

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weights, total, targets = ctx.saved_tensors
        smoothing = ctx.label_smoothing
        scale = grad / total
        rows = torch.arange(targets.numel(), device=targets.device)
        spread = grad * (smoothing / weights.size(1))  # e / C of each row's gradient, taken from every item
        at_targets = weights[rows, targets] * scale - grad * (1 - smoothing) - spread
        # computed in fp32 and rounded once into the logits' dtype: no fp32 (R, C) gradient in between
        grad_logits = torch.empty_like(weights, dtype=ctx.logits_dtype)
        for start in range(0, weights.size(0), ctx.chunk_rows):
            part = slice(start, start + ctx.chunk_rows)
            if smoothing:
                torch.addcmul(-spread[part].unsqueeze(1), weights[part], scale[part].unsqueeze(1),
                              out=grad_logits[part])
            else:
                torch.mul(weights[part], scale[part].unsqueeze(1), out=grad_logits[part])
        grad_logits[rows, targets] = at_targets.to(ctx.logits_dtype)  # one entry a row: deterministic on GPUs
        return grad_logits, None, None, None


def draw_negatives(real_targets: torch.Tensor, num_items: int, num_negatives: int,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """A step's shared negatives for the sampled item loss, and log q(item), the probability that one draw is that
    item (any tensor of items 1..num_items).

    The proposal q is a fixed mixture: half of the draws are the targets of random loss rows of the step (items
    as often as they are targets: popular, hard negatives, each with probability count / rows), the other half
    uniform over the catalogue (so that every item, the long tail included, is drawn sometimes: q > 0 everywhere),
    all with replacement; q(item) = 1/2 count(item) / rows + 1/2 / num_items. Without target rows all draws are
    uniform. A batch's targets are counted by binary search in their sorted copy: no (num_items,) tensor, and
    deterministic on a GPU (bincount is not).
    """
    device = real_targets.device
    from_batch = num_negatives // 2 if real_targets.numel() else 0
    picked_rows = torch.randint(max(1, real_targets.numel()), (from_batch,), generator=generator, device=device)
    uniform = torch.randint(1, num_items + 1, (num_negatives - from_batch,), generator=generator, device=device)
    negatives = torch.cat([real_targets[picked_rows], uniform])
    sorted_targets = real_targets.sort().values
    batch_share = from_batch / num_negatives

    def log_q(items: torch.Tensor) -> torch.Tensor:
        count = (torch.searchsorted(sorted_targets, items, right=True) - torch.searchsorted(sorted_targets, items))
        in_batch = count.float() / max(1, real_targets.numel())
        return torch.log(batch_share * in_batch + (1 - batch_share) / num_items)

    return negatives, log_q


def sampled_softmax_nll(target_logits: torch.Tensor, negative_logits: torch.Tensor, target_log_q: torch.Tensor,
                        negative_log_q: torch.Tensor, accidental_hits: torch.Tensor) -> torch.Tensor:
    """The sampled softmax's cross-entropy of each row's target, (R,), against N negatives drawn from q.

    Each candidate's logit is corrected by its log sampling probability, s - log q (the logQ correction: Jean et
    al. 2015; Yi et al. 2019): the softmax over the target and the corrected negatives then estimates the full
    softmax, whose partition function sum_j exp(s_j) the negatives' sum of exp(s_j) / q_j estimates, up to the
    constant N, which cancels. A negative that is the row's own target (an accidental hit, accidental_hits (R, N))
    is left out. With every item once among the negatives and a uniform q, this is the full softmax's
    cross-entropy exactly. Equal to logsumexp over [target, negatives] minus the target, computed by
    _SampledSoftmaxNLL with one (R, N) buffer forward and one backward.
    """
    return _SampledSoftmaxNLL.apply(target_logits, negative_logits, target_log_q, negative_log_q, accidental_hits)


class _SampledSoftmaxNLL(torch.autograd.Function):
    """sampled_softmax_nll with one (R, N) buffer forward and one backward.

    Written out with autograd's own ops (a subtraction, the masking, a concatenation, logsumexp and the target's
    column) the loss allocated and swept seven (R, N) tensors a step, more than the negatives' matrix product it
    follows (docs/RESULTS.md, the sampled step's profile). Here the corrected, masked scores are shifted and
    exponentiated in place, kept for the backward, and the gradient is one scaled copy of them: d nll / d s_j =
    p_j for a negative, p_target - 1 for the target (p: the softmax over the target and the unmasked negatives).
    """

    @staticmethod
    def forward(ctx, target_logits, negative_logits, target_log_q, negative_log_q, accidental_hits):
        target = target_logits - target_log_q
        # fp32 whatever negative_logits' dtype (a bf16 tensor minus a fp32 one)
        weights = (negative_logits - negative_log_q).masked_fill_(accidental_hits, float("-inf"))
        # the largest of the row's candidates; finite, as the target is always one of them
        shift = torch.maximum(weights.amax(1), target) if weights.size(1) else target
        weights.sub_(shift.unsqueeze(1)).exp_()  # exp(s_j - shift); 0 for the accidental hits
        target_weight = (target - shift).exp()
        total = weights.sum(1) + target_weight
        ctx.save_for_backward(weights, total, target_weight)
        ctx.negative_dtype = negative_logits.dtype
        return shift + total.log() - target

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weights, total, target_weight = ctx.saved_tensors
        scale = grad / total
        return scale * target_weight - grad, (weights * scale.unsqueeze(1)).to(ctx.negative_dtype), None, None, None


def target_index(is_target: torch.Tensor, row_bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat (B*T) positions of is_target's True entries, in order, padded with repeats of the first position to
    a multiple of row_bucket (0: no padding), and which of them are real (not padding).

    The number of target rows changes from step to step (window lengths, the crop); without padding, every step
    allocates its logits (rows x items) at a new size and glibc's heap keeps the high-water mark of each, which
    grew the peak RSS of a cropped run 2.3-fold (docs/RESULTS.md). Padded, a run sees at most B*T / row_bucket
    sizes, and the padding rows cost at most row_bucket - 1 rows of the item head per step.
    """
    index = is_target.flatten().nonzero().squeeze(1)
    count = index.numel()
    padded = -(-count // row_bucket) * row_bucket if row_bucket > 0 else count
    real = torch.arange(padded, device=index.device) < count
    return torch.cat([index, index[:1].expand(padded - count)]), real


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of values[keep]; 0 (not NaN) when nothing is kept, e.g. a batch whose random masks all missed."""
    return (values * keep).sum() / keep.sum().clamp(min=1)


def make_batch(data_tensors: dict[str, torch.Tensor], rows: torch.Tensor, mask_token: int, mask_prob: float,
               user_dropout: float, demographics_dropout: float, generator: torch.Generator,
               mask_last: bool = False, crop_prob: float = 0.0, new_user_prob: float = 0.0,
               causal: bool = False) -> dict:
    """The inputs of one training step for these windows.

    Cloze masks are drawn afresh for every batch. With mask_last (the next-item task) the newest position is
    also [MASK] with the previous event's day, as at inference, and is left out of batch["masked"]; the random
    masks on the older positions make that input differ between epochs (at next-item weight 1.0 the model still
    over-fits those targets on ML-1M: see docs/RESULTS.md). Some rows hide the user id or the demographics (the
    cold-start paths). mask_last must be on exactly when the next-item task is (TrainConfig.next_item_on; the
    objective checks batch["mask_last"]).
    crop_prob > 0 first cuts that share of the windows at a random earlier event (crop_windows), so the newest
    position, and with it the next-item target, is not the same item in every epoch. new_user_prob > 0 replaces
    that share of the rows by their user's first events, user id hidden (new_user_rows).
    causal (a causal model, SASRec-style): no cloze masks; every position that has a successor in the window is a
    target and predicts that successor (batch["targets"], batch["target_ratings"]); the newest position predicts
    its own item, [MASK]ed when mask_last. mask_prob is not used.
    """
    new_user = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    if new_user_prob > 0:  # no random numbers drawn when off: runs without it stay bit-identical
        window, new_user = new_user_rows(data_tensors, rows, new_user_prob, generator)
    else:
        window = {name: data_tensors[f"window_{name}"][rows] for name in ("items", "days", "ratings")}
    if crop_prob > 0:
        window = crop_windows(window, crop_prob, generator)
    items, days = window["items"], window["days"]
    users = data_tensors["window_users"][rows]
    targets, target_ratings = items, window["ratings"]
    if causal:
        masked_seq, masked = items, torch.zeros_like(items, dtype=torch.bool)
        masked[:, :-1] = items[:, :-1] != 0  # windows are right-aligned: a real position's successor is real
        targets = torch.cat([items[:, 1:], items[:, -1:]], dim=1)
        target_ratings = torch.cat([target_ratings[:, 1:], target_ratings[:, -1:]], dim=1)
    else:
        masked_seq, masked = mask_random_items(items, mask_prob, mask_token, generator)
    if mask_last:
        masked_seq, days = mask_last_item(masked_seq, days, mask_token)
        masked[:, -1] = False
    user = user_features(data_tensors, users)
    hide_user = (torch.rand(users.shape, generator=generator, device=users.device) < user_dropout) | new_user
    hide_demographics = torch.rand(users.shape, generator=generator, device=users.device) < demographics_dropout
    user["user_idx"] = users.masked_fill(hide_user, 0)
    for feature in user.keys() - {"user_idx"}:
        hide = hide_demographics.view(-1, *[1] * (user[feature].dim() - 1))
        user[feature] = user[feature].masked_fill(hide, 0)
    return {
        "items": items, "ratings": window["ratings"], "days": days, "targets": targets,
        "target_ratings": target_ratings,
        "masked_seq": masked_seq, "masked": masked, "mask_last": mask_last, "user": user,
        "genre_profile": data_tensors["user_preference_profile"][users],
    }


class WindowShard(NamedTuple):
    """A process's training windows: [start, stop) of the window arrays, and how many of them it trains per epoch
    (every rank the same number, so that all take the same steps)."""

    start: int
    stop: int
    per_epoch: int


def window_shard(window_users: np.ndarray, rank: int, world_size: int) -> WindowShard:
    """This rank's block of windows: contiguous and of whole users (a user's windows are consecutive, so a user's
    first window, which --new_user_prob reads, is in the same block), the blocks' boundaries moved back from equal
    shares to the start of the user they fall in. One process: every window."""
    num_windows = len(window_users)
    if world_size == 1:
        return WindowShard(0, num_windows, num_windows)
    shares = np.arange(1, world_size) * num_windows // world_size
    bounds = np.concatenate([[0], np.searchsorted(window_users, window_users[shares]), [num_windows]])
    per_epoch = int(np.diff(bounds).min())
    if per_epoch == 0:
        raise ConfigError(f"{num_windows} training windows cannot be shared by {world_size} processes as blocks of "
                          "whole users; use fewer processes (--nproc_per_node)")
    return WindowShard(int(bounds[rank]), int(bounds[rank + 1]), per_epoch)


def epoch_batches(shard: WindowShard, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """A fresh shuffle of this process's windows, per_epoch of them, as indices into its block (data_to_tensors
    with the same shard); with one process, a shuffle of every window."""
    order = torch.randperm(shard.stop - shard.start, generator=generator)
    yield from order[:shard.per_epoch].split(batch_size)


# ----------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalTensors:
    """EvalInputs moved to torch once, with the user features each batch needs."""

    inputs: EvalInputs
    items: torch.Tensor
    days: torch.Tensor
    users: torch.Tensor
    targets: torch.Tensor


def to_eval_tensors(inputs: EvalInputs, device: torch.device) -> EvalTensors:
    return EvalTensors(inputs, torch.from_numpy(inputs.items).to(device), torch.from_numpy(inputs.days).to(device),
                       torch.from_numpy(inputs.users).to(device), torch.from_numpy(inputs.targets).to(device))


@torch.no_grad()
def evaluate(model: EnhancedBERT4Rec, split: EvalTensors, data_tensors: dict[str, torch.Tensor],
             batch_size: int) -> dict[str, float]:
    """Full-ranking HR/NDCG over all users (seen items excluded), plus the auxiliary heads' metrics."""
    was_training = model.training
    model.eval()
    inputs = split.inputs
    ranks, rating_errors, preference_kl, preference_overlap = [], [], [], []
    for start in range(0, len(inputs.users), batch_size):
        stop = min(start + batch_size, len(inputs.users))
        users = split.users[start:stop]
        scores, rows, hidden = score_last_position(model, split.items[start:stop], split.days[start:stop],
                                                   user_features(data_tensors, users),
                                                   states=model.config.use_preference_head)
        offsets = inputs.seen_offsets[start:stop + 1]
        exclude_seen(scores, offsets, inputs.seen_items)
        ranks.append(target_ranks(scores, split.targets[start:stop]))
        if model.config.use_rating_head:
            predicted = model.predict_rating(rows, split.targets[start:stop], users).float()
            true = torch.from_numpy(inputs.target_ratings[start:stop]).to(predicted)
            rating_errors.append(predicted - true)
        if model.config.use_preference_head:
            logits = model.predict_preference(hidden, split.items[start:stop]).float()
            target = data_tensors["user_preference_profile"][users]
            preference_kl.append(preference_loss(logits, target) * len(users))
            preference_overlap.append(preference_top_k_overlap(logits, target) * len(users))
    metrics = ranking_metrics(torch.cat(ranks))
    if rating_errors:
        metrics["rating_rmse"] = torch.cat(rating_errors).pow(2).mean().sqrt().item()
    if preference_kl:
        metrics["preference_kl"] = (sum(preference_kl) / len(inputs.users)).item()
        metrics["preference_top3_overlap"] = (sum(preference_overlap) / len(inputs.users)).item()
    model.train(was_training)
    return metrics


def baseline_metrics(data: SequenceData, split_inputs: EvalInputs) -> dict[str, float]:
    """Reference points computed from the training part only: bias-model RMSE (with ratings) and the KL of the
    preference profile against the global one (with a preference feature; named after ML-1M's genres)."""
    baselines = {}
    if data.has_ratings:
        users, items, ratings = training_events(data)
        mu, user_bias, item_bias = fit_bias_baseline(users, items, ratings)
        predicted = np.clip(mu + user_bias[split_inputs.users] + item_bias[split_inputs.targets], 1, 5)
        baselines["bias_baseline_rmse"] = float(np.sqrt(np.mean((predicted - split_inputs.target_ratings) ** 2)))
    if data.preference_feature:
        profile = data.user_preference_profile[split_inputs.users].astype(np.float64)
        global_profile = data.user_preference_profile[0].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(profile > 0, profile * (np.log(profile) - np.log(global_profile)), 0.0)
        baselines["global_genre_kl"] = float(terms.sum(axis=1).mean())
    return baselines


# ----------------------------------------------------------------------------------------------------
# Checkpoints: plain data only, written atomically


def atomic_torch_save(payload: dict, path: Path) -> None:
    buffer = io.BytesIO()  # serialised first: torch hides a failed file write behind its own RuntimeError
    torch.save(payload, buffer)
    _write_or_explain(path, lambda handle: handle.write(buffer.getbuffer()))


def atomic_write_json(payload: dict, path: Path) -> None:
    _write_or_explain(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode()))


def _write_or_explain(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """atomic_file, with a failed write (full disk, quota, lost folder) as a TrainingError that says the previous
    file is intact and how to go on."""
    try:
        with atomic_file(path) as handle:
            write(handle)
    except OSError as error:
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise TrainingError(f"could not write {path} ({error.strerror or error}): {kept}; free space (or fix the "
                            f"folder) and continue with --resume {path.parent / 'last.pt'}") from None


def load_checkpoint(path: str | Path) -> dict:
    """read_checkpoint() with the trainer's error type (one line from the CLI)."""
    try:
        return read_checkpoint(path)
    except CheckpointFileError as error:
        raise TrainingError(str(error)) from None


def check_resumable(checkpoint: dict, model_config: ModelConfig, config: TrainConfig, fingerprint: str,
                    path: str) -> None:
    """Refuse to continue a run on other data, another network or other task weights."""
    if checkpoint["data_fingerprint"] != fingerprint:
        raise TrainingError(f"checkpoint {path} was trained on other data (fingerprint "
                            f"{checkpoint['data_fingerprint'][:12]} vs {fingerprint[:12]}): "
                            "resume with the same --data_dir, --seq_length/--window_stride and hold-outs")
    try:  # a key added since the checkpoint was written takes its default, as the engine reads it
        saved = ModelConfig.from_dict(checkpoint["model_config"]).to_dict()
    except ValueError as error:
        raise TrainingError(f"checkpoint {path}: {error}") from None
    current = model_config.to_dict()
    if saved != current:
        differ = sorted(k for k, v in current.items() if saved[k] != v)
        raise TrainingError(f"checkpoint {path} has another model configuration (differs in {', '.join(differ)}): "
                            "resume with the flags it was trained with")
    if checkpoint["train_config"]["task_weights"] != config.task_weights:
        raise TrainingError(f"checkpoint {path} was trained with other task weights: resume with the same weights")


# ----------------------------------------------------------------------------------------------------
# The training run


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory this process frees for its next allocations; True when it took (Linux
    with glibc), False elsewhere, where nothing changes.

    By default malloc serves large blocks with fresh mmaps and hands the top of its heap back to the system once
    more than twice its self-adjusting mmap threshold lies free there, so until a validation pass's large blocks
    have raised that threshold (to 32 MB at most) every training step allocated its activations, scores and
    gradients in pages that the kernel had to fault in and zero again (about 8,000 page faults a step of
    configs/bf16_small.txt, 80,000-88,000 of configs/best.txt), and blocks above 32 MB (the best model's 38 MB
    full-softmax scores) are mapped afresh for good. Here every block comes from the heap (no mmap; glibc still
    maps one where the heap cannot grow) and the heap keeps up to 2 GB free at its top, so a step reuses the pages
    of the steps before from the first step on: after a validation pass the best model's step 0.95x with about
    1,000 faults instead of 80,000, the small model's unchanged (glibc's default faults little there by then), the
    peak RSS up to 200 MB higher (benchmarks/bench_allocator.py, docs/RESULTS.md).
    """
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing)
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(M_MMAP_MAX, 0))


def setup_runtime(config: TrainConfig) -> Runtime:
    """Device choice, the allocator's setting (keep_freed_memory) and, under torchrun, the process group (gloo on
    CPU, nccl on GPU)."""
    keep_freed_memory()
    try:
        device = pick_device(config.device, config.amp)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Runtime(device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world_size)


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, schedule: str,
                         budget_used: float = 0.0, decay_fraction: float = 0.2) -> float:
    """Linear warmup to the peak, then cosine or linear decay to 0 at total_steps (or constant, or wsd, wsd_sqrt).

    wsd (warmup-stable-decay) holds the peak and decays linearly to 0 over the last decay_fraction of the run, so
    a short budget trains at the peak learning rate for most of its time instead of decaying from the first step.
    wsd_sqrt decays as 1 - sqrt(d) of the decay's progress d: faster at first, then slower near 0.
    budget_used (0..1, the share of --max_minutes spent) makes the decay end on time: progress is the larger of
    the step share and the time share, so a run under a time budget reaches its low learning rate before it is cut.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max((step - warmup_steps) / max(1, total_steps - warmup_steps), budget_used))
    if schedule in ("wsd", "wsd_sqrt"):
        remaining = min(1.0, (1.0 - progress) / decay_fraction)
        return remaining if schedule == "wsd" else 1.0 - math.sqrt(1.0 - remaining)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def autocast_context(amp: str, device_type: str) -> AbstractContextManager:
    """The forward pass's mixed-precision context for --amp (off: a no-op); weights and optimizer state stay fp32."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings. Fused (one pass over each parameter, no temporaries)
    on CPUs and CUDA GPUs: torch's default on a CPU is seven element-wise passes per parameter with two temporaries
    of its size, a cost that grows with the item table (docs/RESULTS.md#at-scale).

    --optimizer muon hands the hidden weight matrices (muon_matrices) to torch's Muon instead, at the same learning
    rate and weight decay, its update scaled to AdamW's RMS ("match_rms_adamw"); the rest stays with AdamW."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.ndim < 2 or "embed" in name or "norm" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    orthogonalised = muon_matrices(model) if config.optimizer == "muon" else set()
    muon = [parameter for parameter in decay if id(parameter) in orthogonalised]
    decay = [parameter for parameter in decay if id(parameter) not in orthogonalised]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(parameter.device.type in ("cpu", "cuda") for parameter in model.parameters())
    adamw = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.98), fused=fused)
    if not muon:
        return adamw
    return OptimizerPair(adamw=adamw, muon=torch.optim.Muon(muon, lr=config.learning_rate,
                                                            weight_decay=config.weight_decay,
                                                            adjust_lr_fn="match_rms_adamw"))


def muon_matrices(model: nn.Module) -> set[int]:
    """The ids of the weight matrices --optimizer muon orthogonalises: every 2-D weight of a Linear layer in the
    encoder, the cross-attention, the side-information projections and the item head's transform. Embeddings stay
    with AdamW, and so do the rating and preference heads, which learn from their own small losses alone: with their
    hidden layers on Muon the best model's test rating RMSE rose from 0.937 to 0.959, with them on AdamW it was 0.942
    (three seeds each; docs/RESULTS.md#the-best-model-with-muon-8-epochs)."""
    heads = {id(layer) for head in model.modules() if isinstance(head, (RatingHead, PreferenceHead))
             for layer in head.modules()}
    return {id(module.weight) for module in model.modules()
            if isinstance(module, nn.Linear) and id(module) not in heads}


class OptimizerPair(torch.optim.Optimizer):
    """Two optimizers stepped as one, over disjoint parameters: param_groups is both parts' groups, read from them
    each time (so one scheduler sets both learning rates and gradient scaling unscales both, also after
    load_state_dict, which gives each part new group dicts), the state dict holds each by name."""

    def __init__(self, **parts: torch.optim.Optimizer) -> None:  # not super().__init__: it would copy the groups
        self.parts = parts
        self.defaults: dict[str, Any] = {}
        self.state: dict = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [group for part in self.parts.values() for group in part.param_groups]

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One step of each part; a closure (torch's convention: recomputes the loss and its gradients) runs once,
        before both, and its loss is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])


class WeightAverage:
    """An exponential moving average of a model's parameters (--ema_decay): after the t-th optimizer step each
    average moves toward its parameter by 1 - min(decay, (1 + t) / (10 + t)), so the first steps, far from where the
    run ends, weigh little in it. Validation, best_model.pt and the test figures use the average (applied()); the
    optimizer keeps stepping the raw weights, which last.pt holds beside the average for --resume."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.parameters = dict(model.named_parameters())
        self.average = {name: parameter.detach().clone() for name, parameter in self.parameters.items()}

    def update(self) -> None:
        self.updates += 1
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.average.values()), [p.detach() for p in self.parameters.values()], weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its raw weights again after it."""
        raw = [parameter.detach().clone() for parameter in self.parameters.values()]
        with torch.no_grad():
            torch._foreach_copy_(list(self.parameters.values()), list(self.average.values()))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(self.parameters.values()), raw)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": dict(self.average)}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved average; without one (a checkpoint whose weights are the average, or a run without it)
        the average starts again from the model's weights as loaded."""
        self.updates = state.get("updates", 0)
        with torch.no_grad():
            for name, value in {**self.parameters, **state.get("average", {})}.items():
                self.average[name].copy_(value)


def data_to_tensors(data: SequenceData, device: torch.device,
                    shard: WindowShard | None = None) -> dict[str, torch.Tensor]:
    """The training tensors on the device: the windows of `shard` only (default: all; the cache's arrays are
    memory-mapped, so a process reads no other window from disk) and every user's features."""
    start, stop = (shard.start, shard.stop) if shard is not None else (0, len(data.window_users))
    windows = {name: getattr(data, name)[start:stop] for name in ("window_items", "window_ratings", "window_days",
                                                                   "window_users")}
    tensors = {name: torch.from_numpy(np.ascontiguousarray(values)).to(device) for name, values in
               (*windows.items(), ("user_preference_profile", data.user_preference_profile))}
    tensors |= {f"user:{name}": torch.from_numpy(values).to(device) for name, values in data.user_values.items()}
    # each user's oldest window in the block (a user's windows are consecutive, oldest first; users outside the
    # block are never asked for); row 0, the unknown user: 0
    users = windows["window_users"]
    first = np.searchsorted(users, np.arange(data.num_users + 1)).clip(max=max(len(users) - 1, 0))
    tensors["user_first_window"] = torch.from_numpy(first).to(device)
    return tensors


def check_finite(sums: dict[str, torch.Tensor], step: int) -> None:
    """Refuse a diverged run. `sums` are the epoch's running loss sums, read every LOSS_SYNC_STEPS steps (a read
    waits for the GPU), so a NaN or inf is caught within that many steps and always before anything is saved."""
    if torch.isfinite(sums["total"]):
        return
    bad = [task for task, loss in sums.items() if task != "total" and not torch.isfinite(loss)]
    raise TrainingError(f"loss of task {', '.join(bad) or 'total'} is {sums['total'].item()} at step {step}: "
                        "the run diverged (try a lower --learning_rate or --amp off); "
                        "the last good checkpoint is kept")


def save_model_checkpoint(path: Path, model: EnhancedBERT4Rec, data_fingerprint: str, config: TrainConfig,
                          **extra) -> None:
    """Write the part of a checkpoint that inference needs (weights, configs, data fingerprint) plus `extra`."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_state": model.state_dict(),
        "model_config": model.config.to_dict(),
        "train_config": asdict(config),
        "data_fingerprint": data_fingerprint,
        **extra,
    }
    atomic_torch_save(checkpoint | {"fields_sha256": fields_digest(checkpoint)}, path)


def train(config: TrainConfig) -> tuple[EnhancedBERT4Rec, dict]:
    """Run one training job end to end.

    Returns this process's model as training left it (not the best checkpoint) and, on rank 0, the results
    also written to results.json (an empty dict on other ranks).
    """
    validate_config(config)
    runtime = setup_runtime(config)
    with run_lock(Path(config.checkpoint_dir)) if runtime.is_main else nullcontext():
        if config.overwrite and runtime.is_main:
            set_aside(Path(config.checkpoint_dir), config.metadata_file)
        return run_training(config, runtime)


def set_aside(folder: Path, metadata_file: Path) -> Path | None:
    """--overwrite: move the run files a --checkpoint_dir holds (and the metadata.json beside them) into
    <folder>/replaced-<time>/, so that a new run starts in a clean folder and nothing is deleted."""
    held = [folder / name for name in (*RUN_FILES, "training_curves.png") if (folder / name).exists()]
    if metadata_file.exists() and metadata_file.parent.resolve() == folder.resolve():
        held.append(metadata_file)
    if not held:
        return None
    aside = Path(tempfile.mkdtemp(prefix=time.strftime("replaced-%Y%m%d-%H%M%S-"), dir=folder))
    for path in held:
        path.rename(aside / path.name)
    print(f"--overwrite: the run that was in {folder} is now in {aside}")
    return aside


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold <folder>/.run.lock for the run's life, so a second run in the same --checkpoint_dir is refused
    instead of mixing its checkpoints and results with this one's. The lock names its process; a lock whose
    process is gone (killed) is stale and taken over. Released on any exit."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".run.lock"
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and _process_alive(owner):
                raise TrainingError(f"--checkpoint_dir {folder} is in use by another training (pid {owner}): "
                                    "wait for it to end or pass another --checkpoint_dir") from None
            lock.unlink(missing_ok=True)  # stale: the process that held it is gone
    else:
        raise TrainingError(f"--checkpoint_dir {folder}: could not take its lock {lock}; remove it if no run uses it")
    with os.fdopen(descriptor, "w") as file:
        file.write(str(os.getpid()))
    for partial in folder.glob(".*.part"):  # left by a run killed while writing; no other run writes here
        partial.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


@dataclass
class Run:
    """Everything one training run holds: its data, network, optimisation state and progress counters."""

    config: TrainConfig
    runtime: Runtime
    data: SequenceData
    model: EnhancedBERT4Rec
    objective: nn.Module  # MultiTaskObjective, DDP-wrapped on several processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    generators: tuple[torch.Generator, torch.Generator]  # shuffle (of this rank's windows), masks (per rank)
    state: dict  # progress saved in every checkpoint and restored by --resume
    budget: dict  # {"used": share of --max_minutes spent}, read by the learning-rate schedule
    started: float  # time.monotonic() when this process began
    budget_clock_start: float  # time.monotonic() - this = the --max_minutes time spent, earlier processes included
    data_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    val_split: EvalTensors | None = None  # rank 0's
    shard: WindowShard = WindowShard(0, 0, 0)  # this rank's training windows (window_shard)
    wandb_run: Any = None
    average: WeightAverage | None = None  # --ema_decay's

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.config.checkpoint_dir)

    def budget_spent(self) -> float:
        """Seconds of --max_minutes used, including what earlier processes of a resumed run used."""
        return time.monotonic() - self.budget_clock_start

    def log(self, *args: Any) -> None:
        if self.runtime.is_main:
            print(*args)

    def save(self, name: str, averaged: bool = False) -> None:
        """A full training checkpoint: the model plus everything --resume needs to continue bit-exactly. With
        --ema_decay the model's weights are the raw ones and the average rides beside them, or (averaged: inside
        WeightAverage.applied, for best_model.pt) the weights are the average, so inference reads it as the model."""
        shuffle, mask = self.generators
        rng = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(), "mask": mask.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        scaler = self.scaler.state_dict() if self.scaler is not None else {}
        self.state["budget_seconds_used"] = self.budget_spent()
        average = {}
        if self.average is not None:
            average = self.average.state_dict()
            if averaged:
                del average["average"]
        save_model_checkpoint(self.checkpoint_dir / name, self.model, self.data.fingerprint, self.config,
                              optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                              scaler=scaler, rng=rng, weight_average=average, **self.state)


def run_training(config: TrainConfig, runtime: Runtime) -> tuple[EnhancedBERT4Rec, dict]:
    """train()'s body, with the flags checked, the process group set up and the checkpoint folder locked."""
    run = start_run(config, runtime)
    if config.resume:
        resume(run, config.resume)
    finished = finished_because(run)
    if finished and runtime.is_main and (run.checkpoint_dir / "results.json").is_file():
        run.log(f"nothing to do: the run resumed from {config.resume} {finished}; its results are unchanged in "
                f"{run.checkpoint_dir / 'results.json'} (raise --max_epochs or --max_minutes to train on)")
        return run.model, json.loads((run.checkpoint_dir / "results.json").read_text())
    open_outputs(run)
    first_epoch, out_of_time, stop = run.state["epoch"], finished.startswith("used its"), finished.startswith("stopped")
    while run.state["epoch"] < config.max_epochs and not (out_of_time or stop):
        record, out_of_time = train_epoch(run)
        stop = validate_and_checkpoint(run, record, out_of_time)
        run.log(epoch_summary(record, run.state) + eta_text(
            run.state["epoch"] - first_epoch, config.max_epochs - run.state["epoch"], time.monotonic() - run.started,
            (config.max_minutes or math.inf) * 60 - run.budget_spent()))
    if stop:
        run.log(f"early stopping: no validation NDCG@10 improvement in {config.patience} evaluations")
    if out_of_time:
        run.log(f"stopped after {config.max_minutes} minutes (--max_minutes)")
    return run.model, finish(run)


def load_run_data(settings: dict[str, Any], data_dir: str | Path | None = None) -> SequenceData:
    """The dataset a run with these trainer settings (asdict of a TrainConfig, or a checkpoint's train_config)
    trains on: its --data_dir (or data_dir, for a moved copy), cache, windows, hold-outs and format."""
    return load_dataset(data_dir or settings["data_dir"], cache_dir=settings["cache_dir"],
                        seq_length=settings["seq_length"], window_stride=settings["window_stride"],
                        holdout_users=settings["holdout_users"], holdout_items=settings["holdout_items"],
                        dataset=settings["dataset"])


def start_run(config: TrainConfig, runtime: Runtime) -> Run:
    """Data, network, objective, optimiser, schedule and generators of a fresh run (seeded, before any resume)."""
    started = time.monotonic()
    torch.manual_seed(config.seed + runtime.rank)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    data = load_run_data(asdict(config))
    config, notes = fit_to_data(config, data)
    if runtime.is_main:
        for note in notes:
            print(note, flush=True)
    model = EnhancedBERT4Rec(build_model_config(config, data)).to(runtime.device)
    model.set_item_side_info(*map(torch.from_numpy, data.item_tables()))
    if model.rating_head is not None:
        model.set_rating_baseline(*fit_bias_baseline(*training_events(data)))
    model.to(runtime.device)
    if config.compile:
        model.encoder.compile()  # in place: parameter names, and so checkpoints, stay those of the plain model
    # Each rank shuffles its own block of windows (window_shard); masks and sampled negatives differ per rank.
    generators = (torch.Generator().manual_seed(config.seed),
                  torch.Generator(runtime.device).manual_seed(config.seed + 1 + runtime.rank))
    objective: nn.Module = MultiTaskObjective(model, config.task_weights, config.loss_row_bucket,
                                              config.num_negatives if config.item_loss == "sampled" else 0,
                                              generators[1], config.label_smoothing)
    if runtime.world_size > 1:
        objective = nn.parallel.DistributedDataParallel(objective)
    optimizer = make_optimizer(model, config)
    shard = window_shard(data.window_users, runtime.rank, runtime.world_size)
    steps_per_epoch = math.ceil(shard.per_epoch / config.batch_size)
    total_steps = max(1, steps_per_epoch // config.grad_accum_steps * config.max_epochs)
    budget = {"used": 0.0}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(
        step, config.warmup_steps, total_steps, config.lr_schedule, budget["used"], config.lr_decay_fraction))
    state = {"epoch": 0, "step": 0, "best_metric": -1.0, "best_epoch": 0, "evals_without_improvement": 0,
             "history": [], "train_seconds": 0.0, "run_id": uuid.uuid4().hex,  # run_id: kept across resumes
             "budget_seconds_used": 0.0}  # the --max_minutes clock, data loading included
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    return Run(config, runtime, data, model, objective, optimizer, scheduler, scaler, generators, state, budget,
               started, budget_clock_start=started, shard=shard, average=average)


def step_seconds(flags: list[str], steps: int = 3, warmup: int = 2, seed: int = 0) -> float:
    """Median seconds of one training step of the configuration `flags` (trainer.py flags) on this CPU, with torch's
    current threads, after `warmup` untimed steps: its network at ML-1M's sizes (ModelConfig's defaults: 3,706
    items, 6,040 users, their features), its objective, batches made as make_batch makes them, the backward pass,
    clipping and fused AdamW, on random windows (the values do not change a step's cost; its shapes do). It costs
    steps + warmup steps and the network's set-up: about 5 s for configs/best.txt on a 2-core bf16 CPU.
    train_config.device_defaults times the best model with it to choose what a --max_minutes can train."""
    config = parse_args([*flags, "--device", "cpu"])
    validate_config(config)
    keep_freed_memory()  # the allocator setting the training runs with (setup_runtime)
    generator = torch.Generator().manual_seed(seed)
    model_config = ModelConfig(**{name: getattr(config, name) for name in MODEL_FLAGS},
                               use_rating_head=config.rating_prediction_weight > 0,
                               use_preference_head=config.user_preference_weight > 0)
    model = EnhancedBERT4Rec(model_config)
    users, windows, shape = model_config.num_users, 4 * config.batch_size, (4 * config.batch_size, config.seq_length)

    def uniform(high: int, size: tuple[int, ...], low: int = 1) -> torch.Tensor:
        return torch.randint(low, high, size, generator=generator)

    tensors = {"window_items": uniform(model_config.num_items + 1, shape), "window_ratings": uniform(6, shape),
               "window_days": uniform(367, shape), "window_users": uniform(users + 1, (windows,)).sort().values,
               "user_preference_profile": torch.rand(users + 1, model_config.preference_size or 1,
                                                     generator=generator).softmax(-1),
               "user_first_window": torch.zeros(users + 1, dtype=torch.long)}
    for feature in model_config.user_features:
        size = (users + 1, feature["size"]) if feature["kind"] == "multi" else (users + 1,)
        tensors[f"user:{feature['name']}"] = uniform(feature["size"] if feature["kind"] != "multi" else 2, size,
                                                     low=0)
    objective = MultiTaskObjective(model, config.task_weights, config.loss_row_bucket,
                                   config.num_negatives if config.item_loss == "sampled" else 0, generator,
                                   config.label_smoothing)
    optimizer = make_optimizer(model, config)
    objective.train()
    times = []
    for _ in range(warmup + steps):
        started = time.perf_counter()
        batch = configured_batch(config, tensors, uniform(windows, (config.batch_size,), low=0),
                                 model_config.mask_index, generator)
        with autocast_context(config.amp, "cpu"):
            loss = objective(batch)["total"]
        loss.backward()
        apply_gradients(model, optimizer, config.grad_clip)
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


def finished_because(run: Run) -> str:
    """Why a (resumed) run has nothing left to train: its epochs, its time budget or early stopping; "" when it
    has."""
    config, state = run.config, run.state
    if state["epoch"] >= config.max_epochs:
        return f"has trained all {config.max_epochs} epochs (--max_epochs)"
    if config.max_minutes is not None and state["budget_seconds_used"] >= config.max_minutes * 60:
        return f"used its {config.max_minutes} minutes (--max_minutes)"
    if state["history"] and state["evals_without_improvement"] >= config.patience:
        return f"stopped early after {config.patience} evaluations without improvement (--patience)"
    return ""


def resume(run: Run, path: str) -> None:
    """Continue from a checkpoint of the same data, network and task weights: weights, optimiser, schedule,
    random generators and progress."""
    checkpoint = load_checkpoint(path)
    check_resumable(checkpoint, run.model.config, run.config, run.data.fingerprint, path)
    run.model.load_state_dict(checkpoint["model_state"])
    if run.average is not None:
        run.average.load_state_dict(checkpoint.get("weight_average", {}))
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    if run.scaler is not None and checkpoint["scaler"]:
        run.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    for generator, name in zip(run.generators, ("shuffle", "mask"), strict=True):
        generator.set_state(checkpoint["rng"][name])
    if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    run.state.update({key: checkpoint[key] for key in run.state if key in checkpoint})
    run.budget_clock_start = run.started - run.state["budget_seconds_used"]
    if run.runtime.is_main:
        bring_best_checkpoint(Path(path).parent, run.checkpoint_dir, run.state)
    run.log(f"resumed from {path} at epoch {run.state['epoch']}, step {run.state['step']}")


def bring_best_checkpoint(source: Path, folder: Path, state: dict) -> None:
    """A run resumed into another --checkpoint_dir takes its best_model.pt along (copied, then renamed into place),
    so that its test figures still come from its best-validation checkpoint. Refused when that file is missing."""
    if state["best_epoch"] == 0 or _run_id_of(folder / "best_model.pt") == state["run_id"]:
        return
    best = source / "best_model.pt"
    if _run_id_of(best) != state["run_id"]:
        raise TrainingError(f"--resume: the run's best checkpoint (epoch {state['best_epoch']}) is not {best}; "
                            f"resume in {source} itself or copy its best_model.pt beside the checkpoint")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / ".best_model.pt.part"
    shutil.copyfile(best, partial)
    partial.replace(folder / "best_model.pt")


def _run_id_of(checkpoint: Path) -> str | None:
    return load_checkpoint(checkpoint).get("run_id") if checkpoint.is_file() else None


def open_outputs(run: Run) -> None:
    """metadata.json and wandb (rank 0), the training and validation tensors on the device, the run's summary."""
    config, runtime, data = run.config, run.runtime, run.data
    if runtime.is_main:
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_metadata(data, config.metadata_file)
        if config.use_wandb:
            import wandb
            run.wandb_run = wandb.init(project=config.wandb_project, name=config.wandb_run_name,
                                       config=asdict(config))
    run.data_tensors = data_to_tensors(data, runtime.device, run.shard)
    if runtime.is_main:  # rank 0 validates; the others take its figure
        run.val_split = to_eval_tensors(eval_inputs(data, "val", config.seq_length), runtime.device)
    num_parameters = sum(p.numel() for p in run.model.parameters())
    run.log(f"{len(data.window_users)} training windows, {data.num_users} users, {data.num_items} items, "
            f"{num_parameters / 1e6:.2f}M parameters, device {runtime.device}, {runtime.world_size} process(es)")


def train_epoch(run: Run) -> tuple[dict, bool]:
    """One pass over this process's share of a fresh shuffle. Returns the epoch's record (mean losses, lr, step,
    cumulative training seconds) and whether --max_minutes ran out during it."""
    config, runtime, state = run.config, run.runtime, run.state
    epoch, epoch_started = state["epoch"] + 1, time.monotonic()
    budget_seconds = config.max_minutes * 60 if config.max_minutes else math.inf
    sums = {task: torch.zeros((), device=runtime.device) for task in ("total", *TASKS)}
    micro_steps, out_of_time = 0, False
    batches = list(epoch_batches(run.shard, config.batch_size, run.generators[0]))
    run.objective.train()
    run.optimizer.zero_grad(set_to_none=True)
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not (config.progress and runtime.is_main), leave=False,
               dynamic_ncols=True)
    for rows in bar:
        micro_steps += 1
        last_micro = micro_steps % config.grad_accum_steps == 0
        losses = forward_backward(run, rows, sync_gradients=last_micro)
        for task, value in losses.items():
            sums[task] += value.detach().float()
        if micro_steps % LOSS_SYNC_STEPS == 0:
            check_finite(sums, state["step"])
            bar.set_postfix({task: f"{sums[task].item() / micro_steps:.3f}" for task in sums if sums[task]})
        if not last_micro:
            continue
        optimizer_step(run)
        if run.budget_spent() > budget_seconds:
            out_of_time = True
            break
    bar.close()
    check_finite(sums, state["step"])
    state["epoch"] = epoch
    state["train_seconds"] += time.monotonic() - epoch_started
    losses = {task: value.item() / max(1, micro_steps) for task, value in sums.items() if value}
    record = {"epoch": epoch, "step": state["step"], "lr": run.scheduler.get_last_lr()[0],
              "train_seconds": state["train_seconds"], **losses}  # cumulative: time to each epoch
    return record, out_of_time


def configured_batch(config: TrainConfig, tensors: dict[str, torch.Tensor], rows: torch.Tensor,
                     mask_token: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """make_batch with the masking, dropout, crop, new-user and causal settings of the trainer's flags `config`."""
    return make_batch(tensors, rows, mask_token, config.mask_prob, config.user_dropout, config.demographics_dropout,
                      generator, mask_last=config.next_item_on, crop_prob=config.next_item_crop,
                      new_user_prob=config.new_user_prob, causal=config.causal)


def forward_backward(run: Run, rows: torch.Tensor, sync_gradients: bool = True) -> dict[str, torch.Tensor]:
    """The gradient half of a training step on the windows `rows`: their batch (fresh masks from the run's mask
    generator), the objective under --amp, and the backward pass of the total loss / --grad_accum_steps (scaled
    when fp16). Under DDP the gradients are averaged across processes only when sync_gradients (the accumulation's
    last micro-batch). Returns the forward pass's losses. A training step is this, then optimizer_step once the
    accumulation is complete: train_epoch reads the losses in between, so a diverged loss is refused before it
    reaches the weights; benchmarks/bench_train.py times the two together."""
    config, runtime = run.config, run.runtime
    batch = configured_batch(config, run.data_tensors, rows.to(runtime.device), mask_index(run.data.num_items),
                             run.generators[1])
    sync = nullcontext() if sync_gradients or runtime.world_size == 1 else run.objective.no_sync()
    with sync:
        with autocast_context(config.amp, runtime.device.type):
            losses = run.objective(batch)
        loss = losses["total"] / config.grad_accum_steps
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
    return losses


def apply_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                    scaler: torch.amp.GradScaler | None = None) -> None:
    """Clip the gradients (grad_clip > 0), step the optimizer (through the fp16 scaler when given), clear them."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_step(run: Run) -> None:
    """Apply the gradients (clipped, through the fp16 scaler when on) and advance the schedule."""
    apply_gradients(run.model, run.optimizer, run.config.grad_clip, run.scaler)
    if not run.config.deterministic and run.config.max_minutes:  # --deterministic: the schedule follows steps only
        run.budget["used"] = run.budget_spent() / (run.config.max_minutes * 60)
    run.scheduler.step()
    run.state["step"] += 1
    if run.average is not None:
        run.average.update()


def validate_and_checkpoint(run: Run, record: dict, last: bool) -> bool:
    """Validate when due (every --eval_every epochs and at the end), keep best_model.pt on improvement, always write
    last.pt, log to wandb. Returns whether early stopping ends the run."""
    config, state = run.config, run.state
    def averaged() -> AbstractContextManager:  # the weights validation and best_model.pt see
        return run.average.applied() if run.average is not None else nullcontext()

    if state["epoch"] % config.eval_every == 0 or state["epoch"] == config.max_epochs or last:
        metrics = {}
        if run.runtime.is_main:  # other ranks take rank 0's figure
            with averaged():
                metrics = evaluate(run.model, run.val_split, run.data_tensors, config.eval_batch_size)
        ndcg = broadcast_float(metrics.get("NDCG@10", 0.0), run.runtime)
        record.update({f"val_{name}": value for name, value in metrics.items()})
        improved = ndcg > state["best_metric"]
        if improved:
            state.update(best_metric=ndcg, best_epoch=state["epoch"], evals_without_improvement=0)
        else:
            state["evals_without_improvement"] += 1
        state["history"].append(record)
        if run.runtime.is_main and improved:
            with averaged():
                run.save("best_model.pt", averaged=run.average is not None)
    else:
        state["history"].append(record)
    if run.runtime.is_main:
        run.save("last.pt")
        if run.wandb_run is not None:
            run.wandb_run.log(record, step=state["step"])
    return state["evals_without_improvement"] >= config.patience


def finish(run: Run) -> dict:
    """Test metrics from the best checkpoint and results.json (rank 0), the next command, wandb's summary; the
    process group ends. Returns the results (an empty dict on other ranks)."""
    results = {}
    if run.runtime.is_main:
        results = final_results(run.config, run.data, run.data_tensors, run.checkpoint_dir, run.state, run.started,
                                run.runtime)
        run.log(next_steps(run.checkpoint_dir, run.config.metadata_file))
        if run.wandb_run is not None:
            run.wandb_run.summary.update(dict(results["test"]))
            run.wandb_run.finish()
    if run.runtime.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return results


def broadcast_float(value: float, runtime: Runtime) -> float:
    """Rank 0's value on every rank, so that all processes stop at the same epoch."""
    if runtime.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def epoch_summary(record: dict, state: dict) -> str:
    losses = " ".join(f"{task}={record[task]:.4f}" for task in ("total", *TASKS) if task in record)
    line = f"epoch {record['epoch']:3d} step {record['step']} lr {record['lr']:.2e} {losses}"
    if "val_NDCG@10" in record:
        line += (f" | val NDCG@10 {record['val_NDCG@10']:.4f} HR@10 {record['val_HR@10']:.4f}"
                 f" (best {state['best_metric']:.4f} @ epoch {state['best_epoch']})")
    return line


def eta_text(epochs_done: int, epochs_left: int, elapsed: float, budget_left: float) -> str:
    """' | ETA 12 min (max_minutes)': the whole run's remaining time from this process's mean epoch (validation
    included, `elapsed` seconds for `epochs_done` epochs) or the time budget left, whichever ends it first; early
    stopping can end it sooner."""
    if epochs_left <= 0:
        return ""
    by_epochs = elapsed / max(1, epochs_done) * epochs_left
    remaining, reason = min((by_epochs, "max_epochs"), (budget_left, "max_minutes"))
    return f" | ETA {max(0.0, remaining) / 60:.1f} min ({reason})"


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the resource module is missing, as on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def next_steps(checkpoint_dir: Path, metadata_path: Path) -> str:
    """Where the run's files are and the command that serves the model."""
    best, results = checkpoint_dir / "best_model.pt", checkpoint_dir / "results.json"
    return (f"best model: {best}\nresults:    {results}\nmetadata:   {metadata_path}\n"
            f"next: python inference.py --model_path {best} --metadata_path {metadata_path} --user_id 1 --k 10")


def machine_description(device: torch.device) -> str:
    """Where a run was measured, for results.json: processor model, the vector instructions torch uses (AVX2,
    AVX512, ...: bf16 is fast only with AMX/AVX512-bf16), cores and, on a GPU, its name."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() + " " for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    machine = f"{model}{platform.machine()} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores"
    return f"{torch.cuda.get_device_name(device)}, {machine}" if device.type == "cuda" else machine


def final_results(config: TrainConfig, data: SequenceData, data_tensors: dict[str, torch.Tensor],
                  checkpoint_dir: Path, state: dict, started: float, runtime: Runtime) -> dict:
    """Test metrics, computed once, from the best-validation checkpoint; written to results.json."""
    best = load_checkpoint(checkpoint_dir / "best_model.pt")
    if best.get("run_id", state["run_id"]) != state["run_id"]:
        raise TrainingError(f"{checkpoint_dir / 'best_model.pt'} was written by another run: its results are not "
                            "this run's; train again in a folder of its own")
    model = model_from_checkpoint(best, checkpoint_dir / "best_model.pt").to(runtime.device)
    test_inputs = eval_inputs(data, "test", config.seq_length)
    test_metrics = evaluate(model, to_eval_tensors(test_inputs, runtime.device), data_tensors,
                            config.eval_batch_size)
    test_metrics.update(baseline_metrics(data, test_inputs))
    best_record = next(r for r in state["history"] if r["epoch"] == best["epoch"])
    results = {
        "test": test_metrics,
        "validation": {k.removeprefix("val_"): v for k, v in best_record.items() if k.startswith("val_")},
        "run_id": state["run_id"],
        "best_epoch": best["epoch"],
        "epochs_run": state["epoch"],
        "steps": state["step"],
        "train_seconds": state["train_seconds"],
        "wall_seconds": time.monotonic() - started,
        "device": str(runtime.device),
        "machine": machine_description(runtime.device),
        "torch_version": torch.__version__,
        "world_size": runtime.world_size,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
        "data_fingerprint": data.fingerprint,
        "model_config": best["model_config"],
        "train_config": asdict(config),
        "history": state["history"],
    }
    atomic_write_json(results, checkpoint_dir / "results.json")
    plot_training_curves(state["history"], checkpoint_dir / "training_curves.png",
                         title=f"{checkpoint_dir}: test NDCG@10 {test_metrics['NDCG@10']:.4f} (epoch {best['epoch']})")
    print("test (best-validation checkpoint, epoch {}): {}".format(
        best["epoch"], " ".join(f"{k}={v:.4f}" for k, v in test_metrics.items())))
    return results


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C from here on: KeyboardInterrupt, below
    config = None
    try:
        config = parse_args(argv, use_device_defaults=True)
        if config.defaults:
            print(f"defaults: {config.defaults}")
        train(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (TrainingError, DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {what_is_on_disk(config)}", file=sys.stderr)
        return 130
    return 0


def what_is_on_disk(config: TrainConfig | None) -> str:
    """The truth about a run stopped by Ctrl-C: the epoch its last.pt holds, or that no checkpoint was written."""
    if config is None:
        return "nothing was written"
    last = Path(config.checkpoint_dir) / "last.pt"
    try:
        epoch = read_checkpoint(last)["epoch"] if last.is_file() else None
    except (CheckpointFileError, KeyError):
        epoch = None
    if epoch is None:
        return f"no epoch was completed, so {config.checkpoint_dir} holds no checkpoint of this run"
    return f"{last} holds epoch {epoch}; continue with --resume {last}"


if __name__ == "__main__":
    sys.exit(main())
