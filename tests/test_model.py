"""Behaviour of enhanced_model.py on small hand-made tensors (no data files needed)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from enhanced_model import (
    NUM_DAY_SLOTS,
    EncoderOutput,
    EnhancedBERT4Rec,
    ModelConfig,
    dropout,
    model_from_checkpoint,
    preference_loss,
    preference_top_k_overlap,
    user_token_names,
)

SWITCH_PREFIXES = {
    "use_item_side_info": ("item_meta.",),
    "use_user_tokens": ("user_meta.", "cross_attention."),
    "use_temporal": ("day_embedding.",),
    "use_rating_head": ("rating_head.",),
    "use_preference_head": ("preference_head.",),
}
ALL_OFF = {switch: False for switch in SWITCH_PREFIXES}


def small_config(**overrides) -> ModelConfig:
    values = dict(num_items=40, num_users=10, hidden_size=32, num_heads=4, num_layers=2, seq_length=12, side_dim=8,
                  item_features=[{"name": "genres", "kind": "multi", "size": 18},
                                 {"name": "year", "kind": "bucketed", "size": 7}])
    return ModelConfig(**{**values, **overrides})


def size(config: ModelConfig, name: str) -> int:
    return next(f["size"] for f in (*config.item_features, *config.user_features) if f["name"] == name)


def build(config: ModelConfig, seed: int = 0) -> EnhancedBERT4Rec:
    torch.manual_seed(seed)
    model = EnhancedBERT4Rec(config)
    generator = torch.Generator().manual_seed(seed)
    genres = (torch.rand(config.item_vocab_size, size(config, "genres"), generator=generator) < 0.3).float()
    genres[[0, config.mask_index]] = 0.0
    years = torch.randint(1, size(config, "year"), (config.item_vocab_size,), generator=generator)
    years[[0, config.mask_index]] = 0
    model.set_item_side_info(genres, years)
    return model


def make_inputs(config: ModelConfig, lengths: list[int], seed: int = 0) -> dict[str, Tensor]:
    """Left-padded sequences with the given real lengths; the last position of each row is MASK."""
    generator = torch.Generator().manual_seed(seed)
    B, T = len(lengths), config.seq_length
    item_seq = torch.randint(1, config.num_items + 1, (B, T), generator=generator)
    day_of_year = torch.randint(1, NUM_DAY_SLOTS, (B, T), generator=generator)
    is_pad = torch.arange(T)[None, :] < (T - torch.tensor(lengths))[:, None]
    item_seq[:, -1] = config.mask_index
    return {
        "item_seq": item_seq.masked_fill(is_pad, 0),
        "day_of_year": day_of_year.masked_fill(is_pad, 0),
        "user_idx": torch.randint(1, config.num_users + 1, (B,), generator=generator),
        "gender": torch.randint(1, size(config, "gender"), (B,), generator=generator),
        "age": torch.randint(1, size(config, "age"), (B,), generator=generator),
        "occupation": torch.randint(1, size(config, "occupation"), (B,), generator=generator),
    }


def all_heads(model: EnhancedBERT4Rec, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every output for every sequence, read at each row's last (MASK) position."""
    hidden = model(**inputs).hidden
    last = hidden[:, -1]
    outputs = {"hidden": hidden, "item_logits": model.item_logits(last)}
    if model.config.use_rating_head:
        candidates = inputs["item_seq"][:, -2].clamp(min=1)  # score the item before the MASK again
        outputs["rating"] = model.predict_rating(last, candidates)
    if model.config.use_preference_head:
        outputs["preference"] = model.predict_preference(hidden, inputs["item_seq"])
    return outputs


def total_loss(model: EnhancedBERT4Rec, inputs: dict[str, Tensor]) -> Tensor:
    outputs = all_heads(model, inputs)
    targets = torch.arange(1, outputs["item_logits"].size(0) + 1)
    loss = F.cross_entropy(outputs["item_logits"], targets)
    if "rating" in outputs:
        loss = loss + F.mse_loss(outputs["rating"], torch.full_like(outputs["rating"], 4.0))
    if "preference" in outputs:
        target = torch.softmax(torch.arange(model.config.preference_size, dtype=torch.float32), dim=0)
        loss = loss + preference_loss(outputs["preference"], target.expand_as(outputs["preference"]))
    return loss


def test_config_round_trips_through_a_plain_dict():
    config = small_config(positional="learned", use_temporal=False, dropout=0.1)
    values = config.to_dict()
    assert json.loads(json.dumps(values)) == values  # plain data: checkpoints and metadata.json hold it
    assert ModelConfig.from_dict(values) == config
    assert ModelConfig.from_dict({}) == ModelConfig()
    defaults = ModelConfig()
    assert (defaults.hidden_size, defaults.num_heads, defaults.num_layers) == (256, 4, 4)
    assert (defaults.seq_length, defaults.dropout, defaults.positional) == (50, 0.2, "sinusoidal")
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**values, "num_experts": 2})
    with pytest.raises(ValueError, match="positional"):
        ModelConfig(positional="rotary")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(hidden_size=30, num_heads=4)


def test_checkpoints_from_before_declared_features_still_load():
    """A checkpoint written when ML-1M's features were fixed (num_genres ... num_occupations, movie_meta.* and
    user_meta.embeddings.gender ... parameter names) loads into the declared-feature model unchanged."""
    config = small_config()
    model = build(config).eval()
    legacy_config = {key: value for key, value in config.to_dict().items() if not key.endswith("_features")}
    legacy_config |= {"num_genres": 18, "num_years": 7, "num_genders": 3, "num_ages": 8, "num_occupations": 22}
    old_names = {"item_meta.embeddings.0.embedding.": "movie_meta.genre_embedding.",
                 "item_meta.embeddings.1.embedding.": "movie_meta.year_embedding.",
                 "item_meta.projection.": "movie_meta.projection.", "item_meta.values_0": "movie_meta.item_genres",
                 "item_meta.values_1": "movie_meta.item_years"} | {
        f"user_meta.{part}.{i}.{'embedding.' if part == 'embeddings' else ''}": f"user_meta.{part}.{name}."
        for part in ("embeddings", "projections") for i, name in enumerate(("identity", "gender", "age", "occupation"))}
    legacy_state = {}
    for key, value in model.state_dict().items():
        new = next((new for new in old_names if key.startswith(new)), None)
        legacy_state[key if new is None else old_names[new] + key[len(new):]] = value
    assert "movie_meta.genre_embedding.weight" in legacy_state and "user_meta.embeddings.gender.weight" in legacy_state
    restored = model_from_checkpoint({"model_config": legacy_config, "model_state": legacy_state}, "old.pt")
    assert restored.config == config
    inputs = make_inputs(config, [12, 5])
    assert torch.equal(restored(**inputs).hidden, model(**inputs).hidden)


def test_features_are_declared_per_dataset():
    """Any declared features build the model: a categorical and a multi user feature, one bucketed item feature and
    no preference head; bad declarations are refused by name."""
    config = small_config(item_features=[{"name": "price", "kind": "bucketed", "size": 5}],
                          user_features=[{"name": "country", "kind": "categorical", "size": 4},
                                         {"name": "topics", "kind": "multi", "size": 6}],
                          use_preference_head=False)
    model = build_plain(config)
    B = 3
    topics = torch.zeros(B, 6)
    topics[0, [1, 4]] = 1.0  # row 1 and 2: no topics (unknown)
    item_seq = torch.randint(1, config.num_items + 1, (B, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"item_seq": item_seq, "day_of_year": torch.ones(B, 12, dtype=torch.long),
              "user_idx": torch.tensor([1, 0, 2]), "country": torch.tensor([2, 1, 0]), "topics": topics}
    weights = model(**inputs, return_attention=True).cross_attention
    assert user_token_names(config) == ("identity", "country", "topics")
    assert weights.shape == (B, 12, 3)
    unknown = torch.tensor([[False, False, False], [True, False, True], [False, True, True]])
    assert torch.equal(weights[:, -1][unknown], torch.zeros(int(unknown.sum())))
    with pytest.raises(ValueError, match="'topics'"):
        model(**{key: value for key, value in inputs.items() if key != "topics"})
    with pytest.raises(ValueError, match="'colour' is not a user feature"):
        model(**inputs, colour=torch.ones(B, dtype=torch.long))
    # the item rows a training step looks up itself give the same encoding; rows of another shape are refused
    torch.testing.assert_close(model(**inputs, item_embeds=model.item_embedding(item_seq)).hidden,
                               model(**inputs).hidden, rtol=0, atol=0)
    with pytest.raises(ValueError, match="item_embeds must be item_seq's embedding rows"):
        model(**inputs, item_embeds=model.item_embedding(item_seq[:, 1:]))
    for bad, message in ((dict(user_features=[{"name": "user_idx", "kind": "categorical", "size": 3}]), "rename"),
                         (dict(user_features=[{"name": "item_embeds", "kind": "categorical", "size": 3}]), "rename"),
                         (dict(item_features=[{"name": "a", "kind": "display", "size": 3}]), "kind 'display'"),
                         (dict(item_features=[{"name": "a", "kind": "multi", "size": 0}]), "positive integer size"),
                         (dict(preference_feature="year"), "not a multi item feature"),
                         (dict(item_features=[], use_preference_head=False), "at least one item feature")):
        with pytest.raises(ValueError, match=message):
            small_config(**bad)


def build_plain(config: ModelConfig) -> EnhancedBERT4Rec:
    torch.manual_seed(0)
    model = EnhancedBERT4Rec(config).eval()
    model.set_item_side_info(torch.arange(config.item_vocab_size) % 5)
    return model


def test_every_head_has_the_documented_shape():
    config = small_config()
    model = build(config).eval()
    inputs = make_inputs(config, [12, 5, 8])
    out = model(**inputs, return_attention=True)
    assert isinstance(out, EncoderOutput)
    assert out.hidden.shape == (3, 12, 32)
    assert len(out.self_attention) == config.num_layers
    assert all(w.shape == (3, 4, 12, 12) for w in out.self_attention)
    assert out.cross_attention.shape == (3, 12, len(user_token_names(config)))
    rows = out.hidden[:, -1]
    assert model.item_logits(rows).shape == (3, config.num_items + 2)
    assert model.predict_rating(rows, torch.tensor([1, 2, 3])).shape == (3,)
    assert model.predict_preference(out.hidden, inputs["item_seq"]).shape == (3, config.preference_size)
    plain = model(**inputs)
    assert plain.self_attention is None and plain.cross_attention is None


def test_padding_never_changes_the_outputs_at_real_positions():
    config = small_config()
    model = build(config).eval()
    inputs = make_inputs(config, [12, 4, 7])
    reference = all_heads(model, inputs)
    is_real = inputs["item_seq"] != 0

    # garbage day of year under the padding
    garbage_days = dict(inputs, day_of_year=inputs["day_of_year"].masked_fill(~is_real, 200))
    # garbage side info in the padding row of the item tables
    side_model = build(config).eval()
    side_model.item_meta.values_0[0] = 1.0
    side_model.item_meta.values_1[0] = 3
    for outputs in (all_heads(model, garbage_days), all_heads(side_model, inputs)):
        assert torch.allclose(outputs["hidden"][is_real], reference["hidden"][is_real], atol=1e-6)
        for head in ("item_logits", "rating", "preference"):
            assert torch.allclose(outputs[head], reference[head], atol=1e-6), head

    # a shorter window is the same sequence with less left padding: positions are right-aligned
    short = {k: (v[:, 5:] if v.dim() == 2 else v) for k, v in inputs.items()}
    short_outputs = all_heads(model, {k: v[1:] for k, v in short.items()})
    longer_rows = {k: v[1:] for k, v in reference.items()}
    assert torch.allclose(short_outputs["hidden"], longer_rows["hidden"][:, 5:], atol=1e-5)
    for head in ("item_logits", "rating", "preference"):
        assert torch.allclose(short_outputs[head], longer_rows[head], atol=1e-5), head

    # the preference pool ignores whatever the encoder left at padded positions
    hidden = reference["hidden"].masked_fill(~is_real[..., None], 1e3)
    assert torch.allclose(model.predict_preference(hidden, inputs["item_seq"]), reference["preference"])


def test_an_all_padding_row_and_an_unknown_user_give_no_nan():
    config = small_config()
    model = build(config).train()
    inputs = make_inputs(config, [12, 0, 3])
    inputs["item_seq"][1] = 0
    for feature in ("user_idx", "gender", "age", "occupation"):
        inputs[feature][1:] = 0  # row 1: nothing known; row 2: a new user with no demographics either
    loss = total_loss(model, inputs)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    out = model(**inputs, return_attention=True)
    assert torch.isfinite(out.hidden).all()
    assert all(torch.isfinite(w).all() for w in out.self_attention)
    assert torch.equal(out.cross_attention[1:], torch.zeros_like(out.cross_attention[1:]))
    assert all(torch.isfinite(v).all() for v in all_heads(model, inputs).values() if v.dim() != 2)


def test_unknown_user_features_are_masked_out_of_cross_attention():
    config = small_config()
    model = build(config).eval()
    inputs = make_inputs(config, [12, 6])
    inputs["user_idx"][0] = 0
    inputs["occupation"][1] = 0
    weights = model(**inputs, return_attention=True).cross_attention
    identity, occupation = user_token_names(config).index("identity"), user_token_names(config).index("occupation")
    assert torch.equal(weights[0, :, identity], torch.zeros(12))
    assert torch.equal(weights[1, :, occupation], torch.zeros(12))
    assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 12))


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_every_enabled_part_receives_gradient(positional):
    config = small_config(positional=positional)
    model = build(config).train()
    total_loss(model, make_inputs(config, [12, 9, 5])).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    for prefixes in SWITCH_PREFIXES.values():
        assert any(name.startswith(prefixes) for name, _ in model.named_parameters())


@pytest.mark.parametrize("switch", list(SWITCH_PREFIXES))
def test_a_disabled_part_has_no_parameters(switch):
    config = small_config(**{switch: False})
    model = build(config)
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if name.startswith(SWITCH_PREFIXES[switch])]
    for other, prefixes in SWITCH_PREFIXES.items():
        if other != switch:
            assert any(name.startswith(prefixes) for name in names), other
    if switch == "use_item_side_info":
        assert not [name for name in model.state_dict() if name.startswith("item_meta.")]
    inputs = make_inputs(config, [12, 3])
    total_loss(model, inputs).backward()  # the rest still runs and trains
    if switch == "use_rating_head":
        with pytest.raises(RuntimeError, match="rating head"):
            model.predict_rating(torch.zeros(1, 32), torch.tensor([1]))


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_plain_bert4rec_has_exactly_the_expected_parameters(positional):
    config = small_config(positional=positional, **ALL_OFF)
    model = EnhancedBERT4Rec(config)
    V, H, T, L = config.num_items + 2, config.hidden_size, config.seq_length, config.num_layers
    embeddings = V * H + (T * H if positional == "learned" else 1)  # the sinusoid has one learned gain
    input_norm = 2 * H
    attention = 3 * (H * H + H) + (H * H + H)  # q, k, v, output projections
    feed_forward = (H * 4 * H + 4 * H) + (4 * H * H + H)
    layer = attention + feed_forward + 2 * (2 * H)  # two LayerNorms
    final_norm = 2 * H
    item_head = (H * H + H) + 2 * H + V  # dense, LayerNorm, output bias (weights tied to the embedding)
    expected = embeddings + input_norm + L * layer + final_norm + item_head
    assert sum(p.numel() for p in model.parameters()) == expected
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {
        "item_embedding", "position_embedding", "input_norm", "encoder", "item_head"}
    hidden = model(make_inputs(config, [12, 4])["item_seq"]).hidden  # only item_seq is needed
    assert hidden.shape == (2, 12, H)


def test_the_same_seed_gives_the_same_output():
    config = small_config()
    inputs = make_inputs(config, [12, 6])
    outputs = []
    for _ in range(2):
        model = build(config, seed=3).train()
        torch.manual_seed(7)  # dropout
        outputs.append(all_heads(model, inputs))
    for head in outputs[0]:
        assert torch.equal(outputs[0][head], outputs[1][head]), head
    other = build(config, seed=4).train()
    torch.manual_seed(7)
    assert not torch.equal(all_heads(other, inputs)["hidden"], outputs[0]["hidden"])


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_dropout_drops_each_element_with_probability_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.rand(4001, 250) + 0.5  # 1,000,250 elements: not a multiple of the four a draw gives
    out = dropout(x, p, training=True)
    kept = out != 0
    scale = 1 / (1 - round(p * 65536) / 65536)
    assert torch.equal(out[kept], x[kept] * scale)
    assert abs(1 - kept.double().mean().item() - p) < 0.002  # 4.6 standard deviations at p = 0.5
    for lane in range(4):  # the four 16-bit pieces of one 64-bit draw drop independently of each other
        lane_kept = kept.flatten()[: 1000248].view(-1, 4)
        assert abs(1 - lane_kept[:, lane].double().mean().item() - p) < 0.004
    both = (~lane_kept[:, 0] & ~lane_kept[:, 1]).double().mean().item()
    assert abs(both - p * p) < 0.003
    assert abs(out.double().mean().item() / x.double().mean().item() - 1) < 0.003


def test_dropout_routes_gradient_through_the_kept_elements_only_and_follows_the_seed():
    x = torch.randn(7, 33, requires_grad=True)
    torch.manual_seed(5)
    out = dropout(x, 0.3, training=True)
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, (out != 0).float() / (1 - round(0.3 * 65536) / 65536))
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.3, training=True), out)
    assert not torch.equal(dropout(x, 0.3, training=True), out)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    assert dropout(x.to(torch.bfloat16), 0.3, training=True).dtype == torch.bfloat16
    assert dropout(torch.empty(0, 5), 0.3, training=True).shape == (0, 5)


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = make_inputs(small_config(), [12, 7, 2])
    gradients = []
    for checkpointing in (False, True):
        model = build(small_config(gradient_checkpointing=checkpointing)).train()
        torch.manual_seed(11)  # same dropout masks: checkpoint replays the RNG state on recomputation
        total_loss(model, inputs).backward()
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    for name, gradient in gradients[0].items():
        assert torch.allclose(gradient, gradients[1][name], atol=1e-6), name


def test_the_attention_weights_path_equals_the_sdpa_path():
    config = small_config()
    model = build(config).eval()
    inputs = make_inputs(config, [12, 5, 1])
    inputs["user_idx"][2] = 0
    fast = model(**inputs)
    explicit = model(**inputs, return_attention=True)
    assert torch.allclose(fast.hidden, explicit.hidden, atol=1e-5)
    is_pad = inputs["item_seq"] == 0
    for weights in explicit.self_attention:
        assert torch.allclose(weights.sum(dim=-1), torch.ones(3, 4, 12))
        to_padding = weights.masked_select(is_pad[:, None, None, :])  # every head and query: 4 * 12 each
        assert torch.equal(to_padding, torch.zeros(int(is_pad.sum()) * 48))


def test_the_mask_token_gets_no_genre_or_year():
    config = small_config()
    model = build(config).eval()
    with torch.no_grad():
        model.item_meta.values_0[config.mask_index] = 1.0  # even a table that wrongly holds a MASK row
        model.item_meta.values_1[config.mask_index] = 5
    item_seq = torch.tensor([[0, 0, 3, config.mask_index, 7, config.mask_index] + [5] * 6])
    movie_meta_embeds = model.item_meta(item_seq)
    is_movie = (item_seq != 0) & (item_seq != config.mask_index)
    assert torch.equal(movie_meta_embeds[~is_movie], torch.zeros(4, config.hidden_size))
    assert (movie_meta_embeds[is_movie].abs().sum(dim=-1) > 0).all()
    # and so the encoder cannot tell which tables sit behind the MASK row
    clean = build(config).eval()
    inputs = make_inputs(config, [12, 8])
    assert torch.allclose(model(**inputs).hidden, clean(**inputs).hidden, atol=1e-6)


def test_item_side_info_is_checked_and_saved_with_the_model():
    config = small_config()
    model = build(config)
    with pytest.raises(ValueError, match="'genres' must be"):
        model.set_item_side_info(torch.zeros(5, 18), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"'year' must lie in \[0, 7\)"):
        model.set_item_side_info(torch.zeros(42, 18), torch.full((42,), size(config, "year")))
    with pytest.raises(ValueError, match="one table per item feature"):
        EnhancedBERT4Rec(config, torch.zeros(42, 18))
    restored = EnhancedBERT4Rec(config)
    restored.load_state_dict(model.state_dict())
    tables = model.item_meta.values_0.numpy(), model.item_meta.values_1.numpy()  # as SequenceData.item_tables()
    from_numpy = EnhancedBERT4Rec(config, *tables)
    assert torch.equal(from_numpy.item_meta.values_1, model.item_meta.values_1)
    assert torch.equal(restored.item_meta.values_0, model.item_meta.values_0)
    assert torch.equal(restored.item_meta.values_1, model.item_meta.values_1)


def test_item_logits_rule_out_pad_and_mask():
    config = small_config()
    model = build(config).eval()
    logits = model.item_logits(torch.randn(5, config.hidden_size))
    assert torch.equal(logits[:, [0, config.mask_index]], torch.full((5, 2), -math.inf))
    assert torch.isfinite(logits[:, 1 : config.mask_index]).all()
    assert torch.isfinite(F.cross_entropy(logits, torch.tensor([1, 2, 3, 4, 40])))


def test_ratings_stay_within_one_to_five():
    config = small_config()
    model = build(config).eval()
    rows = torch.cat([torch.full((1, 32), -1e4), torch.full((1, 32), 1e4), torch.randn(2, 32)])
    ratings = model.predict_rating(rows, torch.tensor([1, 2, 3, 4]))
    assert ((ratings >= 1) & (ratings <= 5)).all()


def test_the_rating_head_corrects_the_bias_baseline():
    config = small_config()
    model = build(config).eval()
    user_bias, item_bias = torch.zeros(config.num_users + 1), torch.zeros(config.item_vocab_size)
    user_bias[3], item_bias[[5, 6]] = 0.5, torch.tensor([-1.0, 0.25])
    model.set_rating_baseline(3.5, user_bias.numpy(), item_bias[:10])  # shorter tables leave the rest at 0
    torch.nn.init.zeros_(model.rating_head.mlp[-1].weight)  # no correction: exactly the baseline
    rows = torch.randn(4, config.hidden_size)
    ratings = model.predict_rating(rows, torch.tensor([5, 6, 7, 5]), torch.tensor([3, 3, 0, 0]))
    assert ratings.tolist() == pytest.approx([3.0, 4.25, 3.5, 2.5], abs=1e-5)
    assert model.predict_rating(rows[:1], torch.tensor([6])).item() == pytest.approx(3.75, abs=1e-5)  # new user
    restored = EnhancedBERT4Rec(config)
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.rating_head.item_bias, model.rating_head.item_bias)
    with pytest.raises(ValueError, match="user_bias"):
        model.set_rating_baseline(3.5, torch.zeros(config.num_users + 2), item_bias)


def test_missing_inputs_of_an_enabled_part_are_reported():
    config = small_config()
    model = build(config)
    inputs = make_inputs(config, [12])
    with pytest.raises(ValueError, match="day_of_year"):
        model(**dict(inputs, day_of_year=None))
    with pytest.raises(ValueError, match="user feature 'occupation'"):
        model(**dict(inputs, occupation=None))
    with pytest.raises(ValueError, match="user_idx"):
        model(**dict(inputs, user_idx=None))
    with pytest.raises(ValueError, match="seq_length"):
        model(torch.ones(1, 13, dtype=torch.long))


def test_preference_loss_is_the_kl_divergence_from_the_profile():
    target = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    assert preference_loss(target.clamp(min=1e-30).log(), target).item() == pytest.approx(0.0, abs=1e-6)
    uniform_logits = torch.zeros(2, 3)
    # KL(p || uniform) = sum p log p + log 3, averaged over the two users
    expected = ((0.5 * math.log(0.5) * 2 + math.log(3)) + (0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5)
                                                            + math.log(3))) / 2
    assert preference_loss(uniform_logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_top_k_overlap_counts_shared_genres():
    target = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.0], [0.0, 0.1, 0.2, 0.3, 0.4]])
    logits = torch.tensor([[5.0, 4.0, 0.0, 3.0, 0.0], [5.0, 4.0, 3.0, 0.0, 0.0]])
    # user 0 shares {0, 1} of top-3 {0, 1, 2}; user 1 shares {2} of {2, 3, 4}
    assert preference_top_k_overlap(logits, target, k=3).item() == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_a_causal_model_reads_older_positions_only():
    config = small_config(causal=True)
    model = build(config).eval()
    inputs = make_inputs(config, [12, 6, 0])
    reference = model(**inputs, return_attention=True)
    changed = dict(inputs, item_seq=inputs["item_seq"].clone())
    changed["item_seq"][:2, 8] = torch.tensor([3, 5]) + (inputs["item_seq"][:2, 8] == 3).long() * 20  # other items
    hidden = model(**changed).hidden
    moved = (hidden - reference.hidden).abs().amax(dim=-1)[:2]  # (2 rows, 12 positions)
    assert (moved[:, :8] < 1e-6).all()  # nothing older than position 8 moves (beyond float rounding)
    assert (moved[:, 8:] > 1e-4).all()  # position 8 and everything newer does
    # the bidirectional model, by contrast, moves older positions too
    bidirectional = build(small_config()).eval()
    moved_back = bidirectional(**changed).hidden - bidirectional(**inputs).hidden
    assert (moved_back[0, :8].abs().amax(dim=-1) > 1e-4).all()

    assert torch.allclose(model(**inputs).hidden, reference.hidden, atol=1e-5)  # the weights path = the SDPA path
    later = torch.ones(12, 12, dtype=torch.bool).triu(diagonal=1)
    is_real = inputs["item_seq"] != 0
    for weights in reference.self_attention:
        assert torch.equal(weights.masked_select(later), torch.zeros(int(later.sum()) * 3 * 4))
        # a real query's weights sum to 1 over real keys; a padding query (and the all-padding row) reads nothing
        assert torch.allclose(weights.sum(dim=-1), is_real[:, None, :].float().expand(3, 4, 12))
    assert torch.isfinite(reference.hidden).all()


def test_a_causal_model_trains_without_nan_on_padded_rows():
    config = small_config(causal=True)
    model = build(config).train()
    inputs = make_inputs(config, [12, 1, 0])
    loss = total_loss(model, inputs)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_side_output_scores_items_by_their_id_plus_their_genres_and_year():
    config = small_config(item_side_output=True)
    model = build(config).eval()
    with torch.no_grad():  # items 1, 2, 3 share one ID row; 1 and 2 share genres and year, 3 differs in both
        model.item_embedding.weight[[2, 3]] = model.item_embedding.weight[1].clone()
        model.item_meta.values_0[[1, 2, 3]] = torch.eye(config.preference_size)[[0, 0, 5]]
        model.item_meta.values_1[[1, 2, 3]] = torch.tensor([2, 2, 6])
    items = torch.arange(config.item_vocab_size)
    expected = model.item_embedding.weight + model.item_meta(items[None])[0]
    assert torch.equal(model.output_item_table(), expected)
    special = [0, config.mask_index]  # no metadata added to the pad and MASK rows (their columns are -inf anyway)
    assert torch.equal(model.output_item_table()[special], model.item_embedding.weight[special])
    logits = model.item_logits(torch.randn(4, config.hidden_size))
    assert torch.equal(logits[:, 1], logits[:, 2])  # nothing tells them apart
    assert (logits[:, 1] - logits[:, 3]).abs().min() > 1e-4  # their metadata does
    plain = build(small_config()).eval()  # the switch off: the ID rows alone, as before
    assert plain.output_item_table() is plain.item_embedding.weight


@pytest.mark.parametrize("side_output", [False, True])
def test_the_item_loss_trains_the_metadata_tables_only_through_the_side_output(side_output):
    model = build(small_config(item_side_output=side_output)).train()
    F.cross_entropy(model.item_logits(torch.randn(5, 32)), torch.tensor([1, 2, 3, 4, 5])).backward()
    meta_grads = [p.grad for p in model.item_meta.parameters()]
    if side_output:
        assert all(g is not None and g.abs().sum() > 0 for g in meta_grads)
    else:
        assert all(g is None for g in meta_grads)


def test_side_output_needs_the_item_side_info():
    with pytest.raises(ValueError, match="item_side_output.*use_item_side_info"):
        small_config(item_side_output=True, use_item_side_info=False)


def test_cosine_scores_are_the_cosine_over_the_temperature_whatever_an_items_embedding_norm():
    config = small_config(cosine_temperature=0.1)
    model = build(config).eval()
    rows = torch.randn(4, config.hidden_size)
    with torch.no_grad():
        model.item_head.bias.uniform_(-1, 1)
        query = F.normalize(model.item_head.transform(rows), dim=-1)
        cosines = query @ F.normalize(model.item_embedding.weight, dim=-1).T
        logits = model.item_logits(rows)
        real = slice(1, config.num_items + 1)
        torch.testing.assert_close(logits[:, real], cosines[:, real] / 0.1 + model.item_head.bias[real])
        assert logits[:, 0].isneginf().all() and logits[:, config.mask_index].isneginf().all()
        assert (logits[:, real] - model.item_head.bias[real]).abs().max() <= 10 + 1e-4  # |cosine| <= 1
        model.item_embedding.weight[5] *= 7.0  # a longer embedding scores the same
        torch.testing.assert_close(model.item_logits(rows), logits)
        dot = build(small_config()).eval()  # the dot product does not: item 5's scores grow 7-fold
        before = dot.item_logits(rows)[:, 5] - dot.item_head.bias[5]
        dot.item_embedding.weight[5] *= 7.0
        torch.testing.assert_close(dot.item_logits(rows)[:, 5] - dot.item_head.bias[5], 7 * before)


def test_a_negative_cosine_temperature_is_refused():
    with pytest.raises(ValueError, match="cosine_temperature must be >= 0"):
        small_config(cosine_temperature=-0.05)


@pytest.mark.parametrize("side_output,cosine_temperature", [(False, 0.0), (True, 0.0), (False, 0.05)])
def test_real_item_logits_are_item_logits_without_the_pad_and_mask_columns(side_output, cosine_temperature):
    config = small_config(item_side_output=side_output, cosine_temperature=cosine_temperature)
    model = build(config).train()
    rows = torch.randn(5, config.hidden_size)
    targets = torch.tensor([1, 7, config.num_items, 3, 40])
    full, real = model.item_logits(rows), model.real_item_logits(rows)
    assert real.shape == (5, config.num_items)
    assert torch.allclose(real, full[:, 1:-1], atol=1e-6)
    loss_full, loss_real = F.cross_entropy(full, targets), F.cross_entropy(real, targets - 1)
    assert loss_real.item() == pytest.approx(loss_full.item(), rel=1e-6)
    grads = [torch.autograd.grad(loss, model.item_embedding.weight)[0] for loss in (loss_full, loss_real)]
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_readout_rows_read_a_causal_model_at_its_newest_event_and_the_mask_without_events():
    from enhanced_model import readout_rows

    hidden = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2)
    item_seq = torch.tensor([[5, 6, 7, 41], [0, 0, 7, 41], [0, 0, 0, 41]])  # 41: [MASK] of 40 items
    causal = build(small_config(causal=True, seq_length=4))
    assert torch.equal(readout_rows(causal, item_seq, hidden), torch.stack([hidden[0, 2], hidden[1, 2], hidden[2, 3]]))
    bidirectional = build(small_config(seq_length=4))
    assert torch.equal(readout_rows(bidirectional, item_seq, hidden), hidden[:, -1])


def test_the_item_scores_stay_fp32_inside_a_caller_s_bf16_autocast():
    """score_last_position's encoder follows the caller's autocast (a notebook scoring under its own); its item
    scores are fp32 whatever the context."""
    from enhanced_model import score_last_position

    config = small_config(causal=True)
    model = build(config).eval()
    inputs = make_inputs(config, [12, 5, 1, 0])
    item_seq, days = inputs.pop("item_seq"), inputs.pop("day_of_year")
    alone = score_last_position(model, item_seq, days, inputs, bf16=True, states=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = score_last_position(model, item_seq, days, inputs, bf16=True, states=False)
    assert torch.equal(inside[0], alone[0]) and torch.equal(inside[1], alone[1])
    with torch.no_grad():
        fp32_scores = model.item_logits(inside[1])
    assert inside[0].dtype == torch.float32 and torch.equal(inside[0], fp32_scores)
    fp32 = score_last_position(model, item_seq, days, inputs, states=False)
    assert not torch.equal(fp32[1], alone[1])  # the encoder did run in bf16


@pytest.mark.parametrize("causal", [True, False])
def test_query_rows_give_the_newest_rows_of_the_whole_pass_and_scores_without_the_states(causal):
    from enhanced_model import score_last_position

    config = small_config(causal=causal, num_layers=3)
    model = build(config).eval()
    inputs = make_inputs(config, [12, 5, 1, 0])  # full, padded, the [MASK] alone after one event, no event
    with torch.no_grad():
        whole = model(**inputs).hidden
        newest = model(**inputs, query_rows=2).hidden
        one_position = model(**{**inputs, "item_seq": inputs["item_seq"][:, -1:],
                                "day_of_year": inputs["day_of_year"][:, -1:]}, query_rows=2).hidden
    assert newest.shape == (4, 2, config.hidden_size) and one_position.shape == (4, 1, config.hidden_size)
    assert torch.allclose(newest, whole[:, -2:], atol=1e-5)
    item_seq, days = inputs.pop("item_seq"), inputs.pop("day_of_year")
    scores, rows, states = score_last_position(model, item_seq, days, inputs)
    fast_scores, fast_rows, none = score_last_position(model, item_seq, days, inputs, states=False)
    assert torch.equal(states, whole) and none is None
    assert torch.allclose(fast_rows, rows, atol=1e-5) and torch.allclose(fast_scores, scores, atol=1e-4)
    assert torch.equal(fast_scores.topk(5).indices, scores.topk(5).indices)
