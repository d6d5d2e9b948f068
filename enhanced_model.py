"""Enhanced BERT4Rec: a bidirectional transformer over a user's item sequence, with the items' declared features
(ML-1M: genres and release year), user tokens read through cross-attention, day-of-year embeddings and three heads.

    sequence_embeds = item_embeds + position_embeds + day_embeds
    query           = LayerNorm(sequence_embeds + item_meta_embeds)
    enhanced        = LayerNorm(query + CrossAttention(query, user_tokens))
    hidden          = TransformerEncoder(enhanced)          # bidirectional, padding masked
    heads           : item_logits(rows), predict_rating(rows, item), predict_preference(hidden, item_seq)

Every side part can be switched off in ModelConfig; with all switches off this is a plain BERT4Rec.
Index conventions follow data_processor.py: 0 is padding / unknown everywhere, MASK = num_items + 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model_config import PAD_INDEX, ModelConfig, device_problem

NUM_DAY_SLOTS = 367  # day of year 1..366, 0 = padding
INIT_STD = 0.02  # BERT's initializer_range


def user_token_names(config: ModelConfig) -> tuple[str, ...]:
    """The user tokens in cross-attention column order: identity, then the user features (ML-1M: gender, age,
    occupation)."""
    return ("identity", *(feature["name"] for feature in config.user_features))


@dataclass
class EncoderOutput:
    """hidden: (B, T, H) final states. With return_attention=True, self_attention holds one (B, heads, T, T)
    tensor per layer and cross_attention is (B, T, 1 + user features), averaged over heads, in user_token_names
    order (None when user tokens are off); both are None otherwise."""

    hidden: Tensor
    self_attention: list[Tensor] | None = None
    cross_attention: Tensor | None = None


def sinusoid_table(length: int, dim: int) -> Tensor:
    """Vaswani et al.'s sin/cos position table, (length, dim), scaled to unit RMS per row."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table * math.sqrt(2.0)


class SinusoidalPositions(nn.Module):
    """Fixed sinusoid with one learned gain. The gain starts at the embeddings' init std so that order does
    not drown item identity at the start (a unit-RMS sinusoid is 50x a 0.02-std embedding), and it can
    grow as the item embeddings grow in training."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("table", sinusoid_table(config.seq_length, config.hidden_size), persistent=False)
        self.scale = nn.Parameter(torch.tensor(INIT_STD))

    def forward(self, positions: Tensor) -> Tensor:
        return self.scale * self.table[positions]


DROPOUT_LEVELS = 2**16  # a CPU dropout mask's resolution: p is rounded to a multiple of 1 / 65,536


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout(x, p, training), with the CPU mask cut from whole 64-bit random numbers, 16 bits an element.

    torch's CPU dropout draws one Bernoulli sample an element from the generator (about 10 ms for the hidden-128
    model's feed-forward activations at batch 64; its 9 dropouts took a fifth of the training step). Here one
    64-bit draw gives four 16-bit integers, an element drops where its integer is among the lowest
    round(p * 65,536) of the 65,536, and the kept ones are scaled by 1 / (1 - the rounded p), so every element's
    expectation is unchanged (in bf16 up to the scale's rounding, as in F.dropout). The draws come from torch's
    default CPU generator (torch.manual_seed fixes them). Other devices use F.dropout (their generators are
    fast); p = 1 zeroes everything, as F.dropout does.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    dropped = round(p * DROPOUT_LEVELS)
    if dropped >= DROPOUT_LEVELS:
        return torch.zeros_like(x)
    draws = torch.empty(-(-x.numel() // 4), dtype=torch.int64).random_(-(2**63), None)  # every 64-bit value
    keep = draws.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - DROPOUT_LEVELS // 2
    return x * keep.to(x.dtype).mul_(DROPOUT_LEVELS / (DROPOUT_LEVELS - dropped))


class Dropout(nn.Module):
    """nn.Dropout through dropout() above."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head attention of `states` over `context` (self-attention when they are the same tensor).

    SDPA when no weights are wanted (the training path); the explicit softmax otherwise, same result.
    context_mask is (B, S), the keys every query may read, or (B, T, S), per query (the causal mask). A query
    with no key to read (an all-padding sequence, a user with nothing known, a padding position under the causal
    mask) gets zero attention output and zero weights instead of softmax-over-nothing = NaN.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout = config.dropout
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key_value = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, states: Tensor, context: Tensor, context_mask: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        B, T, H = states.shape
        S = context.size(1)
        head_dim = H // self.num_heads
        q = self.query(states).view(B, T, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.key_value(context).view(B, S, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        if context_mask.dim() == 2:  # (B, S): the same keys for every query
            context_mask = context_mask[:, None, :]
        has_key = context_mask.any(dim=-1, keepdim=True)[:, None]  # (B, 1, 1 or T, 1)
        allowed = context_mask[:, None] | ~has_key  # let key-less queries attend anywhere, then zero
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights or (dropout_p > 0.0 and q.device.type == "cpu"):  # SDPA's CPU dropout is torch's slow one
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) * has_key
            attended = dropout(weights, dropout_p, self.training) @ v
            weights = weights if need_weights else None
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
            attended = attended * has_key
        return self.output(attended.transpose(1, 2).reshape(B, T, H)), weights


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.expand = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.contract = nn.Linear(4 * config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.contract(F.gelu(self.expand(x)))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)), then x + FFN(LN(x)); GELU FFN of 4 * hidden as BERT4Rec.

    On ML-1M (cloze loss, 64 epochs) pre-LN and BERT's post-LN reached the same validation NDCG@10;
    pre-LN is kept because it does not depend on a learning-rate warm-up to stay stable (Xiong et al. 2020).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.attention = Attention(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size)
        self.feed_forward = FeedForward(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, key_mask: Tensor, need_weights: bool,
                query_rows: int | None = None) -> tuple[Tensor, Tensor | None]:
        """query_rows: only the newest query_rows positions read the sequence and come out (B, query_rows, H);
        every position is still a key."""
        normed = self.attention_norm(x)
        queries = normed
        if query_rows is not None:
            x, queries = x[:, -query_rows:], normed[:, -query_rows:]
            key_mask = key_mask[:, -query_rows:] if key_mask.dim() == 3 else key_mask
        attended, weights = self.attention(queries, normed, key_mask, need_weights)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        return x, weights


class Encoder(nn.Module):
    """Stack of bidirectional layers, or causal ones (config.causal: position t reads positions <= t only);
    padding positions are masked as keys (their own rows are ignored)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)  # pre-LN leaves the residual stream unnormalised
        self.gradient_checkpointing = config.gradient_checkpointing
        self.causal = config.causal

    def forward(self, x: Tensor, key_mask: Tensor, need_weights: bool,
                query_rows: int | None = None) -> tuple[Tensor, list[Tensor] | None]:
        """query_rows: the output holds the newest query_rows positions only (B, query_rows, H), and the last layer
        computes no other row (its queries, output projection and feed-forward: 10 of its 12 H^2 multiply-adds a
        row), the same values as slicing the whole output."""
        if self.causal:
            T = key_mask.size(1)
            older = torch.ones(T, T, dtype=torch.bool, device=key_mask.device).tril()  # [query, key]: key <= query
            key_mask = key_mask[:, None, :] & older  # (B, T, T)
        # attention weights are not kept through a recomputation, so they switch checkpointing off
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        recompute = recompute and not need_weights
        all_weights = []
        for depth, layer in enumerate(self.layers, start=1):
            rows = query_rows if depth == len(self.layers) else None
            if recompute:
                x, weights = checkpoint(layer, x, key_mask, False, rows, use_reentrant=False)
            else:
                x, weights = layer(x, key_mask, need_weights, rows)
            all_weights.append(weights)
        return self.final_norm(x), (all_weights if need_weights else None)


class FeatureEmbedding(nn.Module):
    """One declared feature ({"name", "kind", "size"}) embedded at side_dim: an index looked up (categorical,
    bucketed; 0 = padding/unknown embeds to zero), or a multi-hot row pooled as the mean of its values' embeddings
    (an empty set embeds to zero)."""

    def __init__(self, feature: dict[str, Any], side_dim: int) -> None:
        super().__init__()
        self.multi = feature["kind"] == "multi"
        self.embedding = nn.Embedding(feature["size"], side_dim, padding_idx=None if self.multi else PAD_INDEX)

    def forward(self, values: Tensor) -> Tensor:
        if not self.multi:
            return self.embedding(values)
        count = values.sum(dim=-1, keepdim=True).clamp(min=1.0)
        return (values @ self.embedding.weight) / count

    def known(self, values: Tensor) -> Tensor:
        """True where the value is known: an index other than 0, a multi-hot row with a value."""
        return values.sum(dim=-1) > 0 if self.multi else values != PAD_INDEX


class ItemMetaEncoder(nn.Module):
    """The item features (config.item_features: ML-1M's genres and release year) of each item in the sequence,
    each embedded (FeatureEmbedding), concatenated and projected to hidden_size.

    The feature values are buffers indexed by item (values_<i>: (num_items + 2,) indices, or a multi-hot), so a
    checkpoint carries them. Padding and MASK positions get exactly zero: a MASK must not reveal the genres of the
    item it hides.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mask_index = config.mask_index
        self.features = config.item_features
        self.embeddings = nn.ModuleList(FeatureEmbedding(feature, config.side_dim) for feature in self.features)
        self.projection = nn.Linear(len(self.features) * config.side_dim, config.hidden_size)
        for i, feature in enumerate(self.features):
            if feature["kind"] == "multi":
                self.register_buffer(f"values_{i}", torch.zeros(config.item_vocab_size, feature["size"]))
            else:
                self.register_buffer(f"values_{i}", torch.zeros(config.item_vocab_size, dtype=torch.long))

    def tables(self) -> list[Tensor]:
        """The per-item value buffers, in feature order."""
        return [getattr(self, f"values_{i}") for i in range(len(self.features))]

    def forward(self, item_seq: Tensor) -> Tensor:
        embeds = [embedding(table[item_seq]) for embedding, table in zip(self.embeddings, self.tables(), strict=True)]
        meta_embeds = self.projection(torch.cat(embeds, dim=-1))
        is_item = (item_seq != PAD_INDEX) & (item_seq != self.mask_index)
        return meta_embeds * is_item.unsqueeze(-1)


class UserMetaEncoder(nn.Module):
    """One token for the user's identity and one per user feature (config.user_features: ML-1M's gender, age group
    and occupation), each embedded at side_dim (FeatureEmbedding) and projected to hidden.

    Index 0 means unknown for every feature; its token is masked out of cross-attention rather than given
    an "unknown" embedding, which would never be trained (every training user has an index and all four
    demographics) and would push the same noise into every cold-start user.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        tokens = [{"name": "identity", "kind": "categorical", "size": config.num_users + 1}, *config.user_features]
        self.embeddings = nn.ModuleList(FeatureEmbedding(feature, config.side_dim) for feature in tokens)
        self.projections = nn.ModuleList(nn.Linear(config.side_dim, config.hidden_size) for _ in tokens)

    def forward(self, user_idx: Tensor, user_features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """user_idx (B,) and each user feature's values ((B,) indices or (B, size) multi-hot) -> tokens
        (B, 1 + features, H), known (B, 1 + features) bool."""
        values = [user_idx, *user_features]
        tokens = [projection(embedding(value))
                  for embedding, projection, value in zip(self.embeddings, self.projections, values, strict=True)]
        known = [embedding.known(value) for embedding, value in zip(self.embeddings, values, strict=True)]
        return torch.stack(tokens, dim=1), torch.stack(known, dim=1)


class UserCrossAttention(nn.Module):
    """Each position reads the user tokens it finds useful: LayerNorm(x + attn(x, user_tokens))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.dropout = Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(
        self, x: Tensor, user_tokens: Tensor, token_known: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attention(x, user_tokens, token_known, need_weights)
        return self.norm(x + self.dropout(attended)), weights


class ItemHead(nn.Module):
    """BERT's masked-LM head: dense + GELU + LayerNorm, then scores against the tied item table + bias.

    With cosine_temperature > 0 the score is the cosine of the two vectors divided by the temperature (HSTU's
    l2-normalised embeddings): an item's score no longer grows with its embedding's norm, only the bias says how
    often it is the answer.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.transform = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(), nn.LayerNorm(config.hidden_size)
        )
        self.bias = nn.Parameter(torch.zeros(config.item_vocab_size))
        self.cosine_temperature = config.cosine_temperature
        self.register_buffer(
            "special_columns", torch.tensor([PAD_INDEX, config.mask_index]), persistent=False
        )

    def forward(self, hidden_rows: Tensor, item_table: Tensor) -> Tensor:
        logits = self._scores(hidden_rows, item_table, self.bias)
        # In place is safe: the matmul's backward needs its inputs, not its output.
        return logits.index_fill_(1, self.special_columns, float("-inf"))

    def real_item_logits(self, hidden_rows: Tensor, item_table: Tensor) -> Tensor:
        """forward()'s columns 1..num_items only (column j - 1 = item j), without the pad and MASK columns: the
        training loss's cheaper form (no fill of the -inf columns, forward or backward)."""
        real = slice(1, item_table.size(0) - 1)  # rows 0 (pad) and num_items + 1 (MASK) left out
        return self._scores(hidden_rows, item_table[real], self.bias[real])

    def sampled_scores(self, hidden_rows: Tensor, target_rows: Tensor, target_bias: Tensor, negative_rows: Tensor,
                       negative_bias: Tensor) -> tuple[Tensor, Tensor]:
        """forward()'s scores of each row's own target, (R,), and of N negatives shared by all rows, (R, N), from
        those items' output rows and biases alone: the sampled item loss never scores the rest of the catalogue."""
        query = self._query(hidden_rows)
        # a batched matmul, not a product and sum, so that autocast computes both in the same precision
        target_scores = (query.unsqueeze(1) @ self._keys(target_rows).unsqueeze(2)).flatten() + target_bias
        return target_scores, F.linear(query, self._keys(negative_rows), negative_bias)

    def _scores(self, hidden_rows: Tensor, item_table: Tensor, bias: Tensor) -> Tensor:
        return F.linear(self._query(hidden_rows), self._keys(item_table), bias)

    def _query(self, hidden_rows: Tensor) -> Tensor:
        query = self.transform(hidden_rows)
        return F.normalize(query, dim=-1) / self.cosine_temperature if self.cosine_temperature > 0 else query

    def _keys(self, item_rows: Tensor) -> Tensor:
        # the pad row is all zeros: normalize's eps keeps it at 0, not NaN
        return F.normalize(item_rows, dim=-1) if self.cosine_temperature > 0 else item_rows


class RatingHead(nn.Module):
    """Rating of a candidate item at a position, as a learned correction to a user + item bias baseline.

    baseline = mean + user_bias[user] + item_bias[item] (buffers, fitted on the training part by the trainer:
    EnhancedBERT4Rec.set_rating_baseline); rating = 1 + 4 * sigmoid(logit((baseline - 1) / 4) + MLP([hidden,
    item_embed])), in [1, 5]. The last layer's bias starts at zero, so an untrained head predicts close to the
    baseline and training only has to learn what the sequence adds. Unknown users (index 0) get no user bias.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.hidden_size, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, 1)
        )
        self.register_buffer("mean", torch.tensor(3.0))
        self.register_buffer("user_bias", torch.zeros(config.num_users + 1))
        self.register_buffer("item_bias", torch.zeros(config.item_vocab_size))

    def forward(self, hidden_rows: Tensor, item_embeds: Tensor, item_idx: Tensor, user_idx: Tensor | None) -> Tensor:
        baseline = self.mean + self.item_bias[item_idx]
        if user_idx is not None:
            baseline = baseline + self.user_bias[user_idx]
        share = ((baseline - 1.0) / 4.0).clamp(1e-3, 1 - 1e-3)
        correction = self.mlp(torch.cat([hidden_rows, item_embeds], dim=-1)).squeeze(-1)
        return 1.0 + 4.0 * torch.sigmoid(torch.logit(share).to(correction.dtype) + correction)


class PreferenceHead(nn.Module):
    """Logits over the preference feature's values (ML-1M: genres), the user's long-term taste, from the mean of
    the sequence's non-padding states."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.preference_size),
        )

    def forward(self, hidden: Tensor, item_seq: Tensor) -> Tensor:
        is_real = (item_seq != PAD_INDEX).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * is_real).sum(dim=1) / is_real.sum(dim=1).clamp(min=1.0)
        return self.mlp(pooled)


class EnhancedBERT4Rec(nn.Module):
    """BERT4Rec with item features, user tokens via cross-attention, day-of-year embeddings and
    item / rating / preference heads. Parts switched off in the config create no parameters.

    Parameter-name prefixes per part: item_embedding, position_embedding, input_norm, encoder, item_head
    (always); day_embedding (use_temporal); item_meta (use_item_side_info); user_meta and
    cross_attention (use_user_tokens); rating_head (use_rating_head); preference_head (use_preference_head).
    """

    def __init__(
        self,
        config: ModelConfig,
        *item_values: Tensor | np.ndarray,
    ) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.item_embedding = nn.Embedding(config.item_vocab_size, H, padding_idx=PAD_INDEX)
        if config.positional == "sinusoidal":
            self.position_embedding = SinusoidalPositions(config)
        else:
            self.position_embedding = nn.Embedding(config.seq_length, H)
        self.day_embedding = (
            nn.Embedding(NUM_DAY_SLOTS, H, padding_idx=PAD_INDEX) if config.use_temporal else None
        )
        self.item_meta = ItemMetaEncoder(config) if config.use_item_side_info else None
        self.user_meta = UserMetaEncoder(config) if config.use_user_tokens else None
        self.cross_attention = UserCrossAttention(config) if config.use_user_tokens else None
        self.input_norm = nn.LayerNorm(H)  # BERT's embedding LayerNorm: the summed embeddings differ in scale
        self.input_dropout = Dropout(config.dropout)
        self.encoder = Encoder(config)
        self.item_head = ItemHead(config)
        self.rating_head = RatingHead(config) if config.use_rating_head else None
        self.preference_head = PreferenceHead(config) if config.use_preference_head else None
        self.apply(_init_bert_weights)
        if item_values:
            self.set_item_side_info(*item_values)

    def set_item_side_info(self, *item_values: Tensor | np.ndarray) -> None:
        """Fill each item feature's table (config.item_features order; ML-1M: the genre multi-hot (num_items+2, 18)
        and the year index (num_items+2,), as SequenceData.item_values). They are buffers, so they are saved with
        the state_dict. Does nothing when use_item_side_info is off."""
        if self.item_meta is None:
            return
        features, tables = self.config.item_features, self.item_meta.tables()
        if len(item_values) != len(features):
            raise ValueError(f"item side info needs one table per item feature "
                             f"({', '.join(f['name'] for f in features)}), got {len(item_values)}")
        for feature, table, values in zip(features, tables, item_values, strict=True):
            values = torch.as_tensor(values, dtype=table.dtype)
            if values.shape != table.shape:
                raise ValueError(f"item side info {feature['name']!r} must be {tuple(table.shape)}, got "
                                 f"{tuple(values.shape)}: built for another dataset or num_items?")
            if feature["kind"] != "multi" and values.numel() and not 0 <= int(values.min()) <= int(values.max()) < \
                    feature["size"]:
                raise ValueError(f"item side info {feature['name']!r} must lie in [0, {feature['size']})")
            table.copy_(values)

    def forward(
        self,
        item_seq: Tensor,
        day_of_year: Tensor | None = None,
        user_idx: Tensor | None = None,
        return_attention: bool = False,
        item_embeds: Tensor | None = None,
        query_rows: int | None = None,
        **user_features: Tensor,
    ) -> EncoderOutput:
        """Encode left-padded item sequences (B, T <= seq_length); day_of_year (B, T), user_idx (B,) and each user
        feature by its name (config.user_features: (B,) indices, or (B, size) multi-hot; ML-1M: gender=, age=,
        occupation=) are required only when their part is switched on. The newest position is always at
        seq_length - 1, so a shorter T equals the same sequence with more left padding. item_embeds (B, T, H), when
        given, are item_seq's rows of item_embedding already looked up (a training step looks every item it reads up
        at once: each lookup's backward writes a gradient the size of the whole item table). query_rows: hidden holds
        the newest query_rows positions only (B, query_rows, H), which the last layer then computes alone."""
        self._check_inputs(item_seq, day_of_year, user_idx, user_features)
        x = self.input_dropout(self.input_norm(self._embed_sequence(item_seq, day_of_year, item_embeds)))
        cross_weights = None
        if self.user_meta is not None:
            values = [user_features[feature["name"]] for feature in self.config.user_features]
            user_tokens, token_known = self.user_meta(user_idx, values)
            x, cross_weights = self.cross_attention(x, user_tokens, token_known, return_attention)
        hidden, self_weights = self.encoder(x, item_seq != PAD_INDEX, return_attention, query_rows)
        if cross_weights is not None:
            cross_weights = cross_weights.mean(dim=1)  # (B, T, n_user_tokens): one distribution per position
        return EncoderOutput(hidden=hidden, self_attention=self_weights, cross_attention=cross_weights)

    def _embed_sequence(self, item_seq: Tensor, day_of_year: Tensor | None, item_embeds: Tensor | None) -> Tensor:
        """item + position (+ day of year) (+ item features): the query of the cross-attention."""
        T = item_seq.size(1)
        positions = torch.arange(self.config.seq_length - T, self.config.seq_length, device=item_seq.device)
        if item_embeds is None:
            item_embeds = self.item_embedding(item_seq)
        elif item_embeds.shape != (*item_seq.shape, self.config.hidden_size):
            expected = (*item_seq.shape, self.config.hidden_size)
            raise ValueError(f"item_embeds must be item_seq's embedding rows, {expected}, got "
                             f"{tuple(item_embeds.shape)}")
        embeds = item_embeds + self.position_embedding(positions)
        if self.day_embedding is not None:
            embeds = embeds + self.day_embedding(day_of_year)
        if self.item_meta is not None:
            embeds = embeds + self.item_meta(item_seq)
        return embeds

    def _check_inputs(self, item_seq: Tensor, day_of_year: Tensor | None, user_idx: Tensor | None,
                      user_features: dict[str, Tensor]) -> None:
        if item_seq.dim() != 2 or item_seq.size(1) > self.config.seq_length:
            raise ValueError(
                f"item_seq must be (batch, T <= seq_length={self.config.seq_length}), "
                f"got {tuple(item_seq.shape)}"
            )
        if self.day_embedding is not None and (day_of_year is None or day_of_year.shape != item_seq.shape):
            raise ValueError("use_temporal is on: pass day_of_year with the shape of item_seq")
        if self.user_meta is None:
            return
        names = [feature["name"] for feature in self.config.user_features]
        unknown = sorted(set(user_features) - set(names))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a user feature of this model (its features: "
                             f"{', '.join(names) or 'none'})")
        batch = item_seq.shape[:1]
        if user_idx is None or user_idx.shape != batch:
            raise ValueError(f"use_user_tokens is on: pass user_idx (batch,) and each user feature by name "
                             f"({', '.join(names)})")
        for feature in self.config.user_features:
            value = user_features.get(feature["name"])
            shape = batch + ((feature["size"],) if feature["kind"] == "multi" else ())
            if value is None or value.shape != shape:
                raise ValueError(f"use_user_tokens is on: pass user feature {feature['name']!r} as a {tuple(shape)} "
                                 f"tensor{' (a multi-hot)' if feature['kind'] == 'multi' else ''}")

    def output_item_table(self) -> Tensor:
        """The (num_items+2, H) rows the item head scores against: the ID embeddings, plus with
        item_side_output each item's feature embedding (ML-1M: genres and year; the input's item representation
        without position and day), so that items with similar metadata share part of their output vector and the
        item loss trains the feature tables directly (measured: no gain at the CPU default's size, docs/RESULTS.md)."""
        if not self.config.item_side_output:
            return self.item_embedding.weight
        every_item = torch.arange(self.config.item_vocab_size, device=self.item_embedding.weight.device)
        return self.item_embedding.weight + self.item_meta(every_item[None])[0]

    def output_item_rows(self, items: Tensor, item_embeds: Tensor | None = None) -> Tensor:
        """output_item_table()'s rows of these items (any shape; rows along a new last dimension), computed for
        them alone; item_embeds: their item_embedding rows, where the caller looked them up already."""
        rows = self.item_embedding(items) if item_embeds is None else item_embeds
        if self.config.item_side_output:
            rows = rows + self.item_meta(items)
        return rows

    def sampled_item_logits(self, hidden_rows: Tensor, targets: Tensor, negatives: Tensor,
                            item_embeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """item_logits' columns of each row's own target, (N,) for targets (N,), and of shared negatives, (N, S) for
        negatives (S,): the sampled item loss's scores, without the (N, num_items) matrix. item_embeds (N + S, H):
        the item_embedding rows of targets then negatives, where the caller looked them up already."""
        head = self.item_head
        # one lookup of targets and negatives together: each lookup's backward fills a gradient of the whole table
        items = torch.cat([targets, negatives])
        rows, bias = self.output_item_rows(items, item_embeds), head.bias[items]
        n = len(targets)
        return head.sampled_scores(hidden_rows, rows[:n], bias[:n], rows[n:], bias[n:])

    def item_logits(self, hidden_rows: Tensor) -> Tensor:
        """Scores (N, num_items+2) of every item for N hidden rows (gather the positions first: never call
        this on B x T rows). Pad and MASK columns are -inf."""
        return self.item_head(hidden_rows, self.output_item_table())

    def real_item_logits(self, hidden_rows: Tensor) -> Tensor:
        """item_logits without its two -inf columns: (N, num_items), column j - 1 scores item j. Cross-entropy
        against target - 1 equals cross-entropy of item_logits against target (exp(-inf) adds nothing)."""
        return self.item_head.real_item_logits(hidden_rows, self.output_item_table())

    def predict_rating(self, hidden_rows: Tensor, item_idx: Tensor, user_idx: Tensor | None = None,
                       item_embeds: Tensor | None = None) -> Tensor:
        """Rating in [1, 5], (N,), of candidate item_idx (N,) at the positions of hidden_rows (N, H), for users
        user_idx (N,); None (or index 0) leaves the user bias out, as for a new user. item_embeds (N, H): item_idx's
        item_embedding rows, where the caller looked them up already."""
        if self.rating_head is None:
            raise RuntimeError("the rating head is switched off (use_rating_head=False)")
        if item_embeds is None:
            item_embeds = self.item_embedding(item_idx)
        return self.rating_head(hidden_rows, item_embeds, item_idx, user_idx)

    def set_rating_baseline(self, mean: float, user_bias: Tensor | np.ndarray, item_bias: Tensor | np.ndarray) -> None:
        """Fill the rating head's bias baseline: user_bias indexed by user index (up to num_users + 1 entries),
        item_bias by item index (up to num_items + 2); missing trailing entries stay 0. They are buffers, so
        they are saved with the state_dict. Does nothing when the rating head is off."""
        if self.rating_head is None:
            return
        head = self.rating_head
        for name, values in (("user_bias", user_bias), ("item_bias", item_bias)):
            values = torch.as_tensor(values, dtype=torch.float32)
            target = getattr(head, name)
            if values.ndim != 1 or len(values) > len(target):
                raise ValueError(f"{name} must be 1-D with at most {len(target)} entries, got shape "
                                 f"{tuple(values.shape)}")
            target.zero_()
            target[:len(values)] = values.to(target.device)
        head.mean.fill_(float(mean))

    def predict_preference(self, hidden: Tensor, item_seq: Tensor) -> Tensor:
        """Logits (B, preference_size) of the user's long-term distribution over the preference feature's values
        (ML-1M: genres) from the window hidden (B, T, H) of item_seq (B, T); train with preference_loss against
        SequenceData.user_preference_profile."""
        if self.preference_head is None:
            raise RuntimeError("the preference head is switched off (use_preference_head=False)")
        return self.preference_head(hidden, item_seq)


def _init_bert_weights(module: nn.Module) -> None:
    # nn.init.trunc_normal_'s default bounds are +-2 absolute, i.e. no truncation at std 0.02: pass +-2 std.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def preference_loss(logits: Tensor, target: Tensor) -> Tensor:
    """KL(target || softmax(logits)), averaged over the batch. target (B, preference_size) rows sum to 1
    (SequenceData.user_preference_profile[user]); zero entries contribute nothing."""
    return F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")


def preference_top_k_overlap(logits: Tensor, target: Tensor, k: int = 3) -> Tensor:
    """Mean over users of |top-k values of logits  &  top-k values of target| / k (ML-1M: genres; ties: torch.topk
    order)."""
    predicted = F.one_hot(logits.topk(k, dim=-1).indices, logits.size(-1)).sum(dim=1)
    actual = F.one_hot(target.topk(k, dim=-1).indices, target.size(-1)).sum(dim=1)
    return (predicted * actual).sum(dim=-1).float().mean() / k


# ----------------------------------------------------------------------------------------------------------
# Shared by training and serving: devices, checkpoints, scoring the next item


CHECKPOINT_FORMAT = 1
NOT_PLAIN_FIELDS = ("model_state", "optimizer", "scheduler", "scaler", "rng", "weight_average",
                    "fields_sha256")  # tensors, states


def fields_digest(checkpoint: dict[str, Any]) -> str:
    """sha256 of a checkpoint's plain-data fields (configs, fingerprint, progress): read_checkpoint compares it with
    the stored "fields_sha256", so a changed setting (num_heads 4 -> 2 fits the same weights) is refused."""
    plain = {key: value for key, value in checkpoint.items() if key not in NOT_PLAIN_FIELDS}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


class CheckpointFileError(ValueError):
    """A checkpoint that is missing, unreadable, of another format, or does not fit this model code."""


def pick_device(name: str, amp: str = "off") -> torch.device:
    """"auto" (cuda when present), "cpu", "cuda" or "cuda:N", checked with the mixed precision that will run on it
    (model_config.device_problem); ValueError for a device or precision this machine does not have."""
    has_cuda = torch.cuda.is_available()
    problem = device_problem(name, amp, has_cuda, cuda_bf16=has_cuda and torch.cuda.is_bf16_supported())
    if problem is not None:
        raise ValueError(problem)
    if name == "auto":
        name = "cuda" if has_cuda else "cpu"
    return torch.device(name)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by trainer.py, loaded as plain data only (weights_only=True), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"checkpoint {path} does not exist: pass a file written by trainer.py")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointFileError(f"checkpoint {path} cannot be read ({error.__class__.__name__}: {first_line}); "
                                  "it is corrupt or not a trainer.py checkpoint") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFileError(f"checkpoint {path} is not a trainer.py checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [key for key in ("model_state", "model_config", "data_fingerprint") if key not in checkpoint]
    if missing:
        raise CheckpointFileError(f"checkpoint {path} lacks {', '.join(missing)}: not a trainer.py checkpoint")
    # checkpoints written before the digest existed have none, and are read as they are
    if "fields_sha256" in checkpoint and checkpoint["fields_sha256"] != fields_digest(checkpoint):
        raise CheckpointFileError(f"checkpoint {path} was changed after it was written (its settings do not match "
                                  "their fields_sha256); use the file trainer.py wrote")
    if not isinstance(checkpoint["model_config"], dict) or not isinstance(checkpoint["model_state"], dict):
        raise CheckpointFileError(f"checkpoint {path} has no model_config/model_state dicts: not a trainer.py "
                                  "checkpoint")
    return checkpoint


_LEGACY_PARTS = {"movie_meta.genre_embedding.": "item_meta.embeddings.0.embedding.",
                 "movie_meta.year_embedding.": "item_meta.embeddings.1.embedding.", "movie_meta.projection.":
                 "item_meta.projection.", "movie_meta.item_genres": "item_meta.values_0",
                 "movie_meta.item_years": "item_meta.values_1"} | {
    f"user_meta.{part}.{name}.": f"user_meta.{part}.{i}.{'embedding.' if part == 'embeddings' else ''}"
    for part in ("embeddings", "projections") for i, name in enumerate(("identity", "gender", "age", "occupation"))}


def current_state_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state_dict with the parameter names of this code: checkpoints written before the side information was
    declared per feature name ML-1M's parts (movie_meta.genre_embedding, user_meta.embeddings.gender, ...)."""
    renamed = {}
    for key, value in state.items():
        old = next((old for old in _LEGACY_PARTS if key.startswith(old)), None)
        renamed[key if old is None else _LEGACY_PARTS[old] + key[len(old):]] = value
    return renamed


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> EnhancedBERT4Rec:
    """The network a read_checkpoint() dict describes, with its weights, in eval mode, on the CPU."""
    try:
        model = EnhancedBERT4Rec(ModelConfig.from_dict(checkpoint["model_config"]))
        model.load_state_dict(current_state_names(checkpoint["model_state"]))
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError, OverflowError, MemoryError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointFileError(f"checkpoint {path} does not fit this model code ({first_line})") from None
    return model.eval()


READOUT_ROWS = 2  # the newest positions readout_rows may read: the [MASK]'s and the newest event's


def readout_rows(model: EnhancedBERT4Rec, item_seq: Tensor, hidden: Tensor) -> Tensor:
    """The hidden row (B, H) that scores each row's next item in data_processor.scoring_input's layout (newest
    position [MASK]): the [MASK]'s for a bidirectional model. A causal model trains every event's position to
    predict its successor, so it reads its newest event's position (T - 2; validation NDCG@10 0.1354 against 0.1277
    at the [MASK], docs/RESULTS.md), and the [MASK]'s only in a row without events (a new user's first request)."""
    if not model.config.causal or item_seq.size(1) < 2:
        return hidden[:, -1]
    has_event = (item_seq[:, -2] != PAD_INDEX)[:, None]
    return torch.where(has_event, hidden[:, -2], hidden[:, -1])


@torch.no_grad()
def score_last_position(model: EnhancedBERT4Rec, item_seq: Tensor, day_of_year: Tensor,
                        user: dict[str, Tensor], bf16: bool = False,
                        states: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Item scores (B, vocabulary) of each row's next item, the hidden rows they were read from (B, H: readout_rows)
    and all hidden states (B, T, H). bf16: the encoder runs under bf16 autocast (where the hardware multiplies bf16,
    most of the work at a fraction of the time); the hidden states are then cast back, and the item scores are
    always computed in fp32 (bf16's 8-bit mantissa would tie many of them). states=False: the last layer computes
    the two rows readout_rows may read and no others (a fifth of a 4-layer encoder's work), and the hidden states
    come back as None. Inside a caller's autocast the encoder runs in the caller's precision and the item scores
    still in fp32."""
    query_rows = None if states else READOUT_ROWS
    device_type = item_seq.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext():
        hidden = model(item_seq, day_of_year, query_rows=query_rows, **user).hidden
    with torch.autocast(device_type, enabled=False):
        hidden = hidden.float()
        rows = readout_rows(model, item_seq, hidden)
        return model.item_logits(rows).float(), rows, hidden if states else None


def exclude_seen(scores: Tensor, seen_offsets: np.ndarray, seen_items: np.ndarray) -> None:
    """Set, in place, the scores of every item in each row's input history to -inf (CSR rows)."""
    lengths = np.diff(seen_offsets)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    items = seen_items[seen_offsets[0]:seen_offsets[-1]]
    scores[torch.from_numpy(rows).to(scores.device), torch.from_numpy(items).to(scores.device)] = -math.inf
