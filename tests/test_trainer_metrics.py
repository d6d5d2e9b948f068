"""Metric and batching functions of trainer.py against hand-computed answers."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ml1m_items

from data_processor import load_dataset, scoring_input
from enhanced_model import EnhancedBERT4Rec, ModelConfig
from model_config import MODEL_FLAGS
from train_config import ConfigError, TrainConfig
from trainer import (
    NEW_USER_MAX_EVENTS,
    MultiTaskObjective,
    build_model_config,
    crop_windows,
    data_to_tensors,
    epoch_batches,
    eta_text,
    exclude_seen,
    fit_bias_baseline,
    learning_rate_factor,
    make_batch,
    mask_last_item,
    mask_random_items,
    next_steps,
    ranking_metrics,
    target_index,
    target_ranks,
    window_shard,
)


def test_target_rank_counts_ties_against_the_target():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5],
                           [0.9, 0.2, 0.3, 0.1],
                           [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([1, 0, 2])
    assert target_ranks(scores, targets).tolist() == [1, 0, 3]


def test_constant_scorer_scores_zero():
    scores = torch.zeros(50, 100)
    targets = torch.randint(0, 100, (50,))
    metrics = ranking_metrics(target_ranks(scores, targets))
    assert all(value == 0.0 for value in metrics.values())


def test_ranking_metrics_hand_computed():
    ranks = torch.tensor([0, 1, 4, 9, 10, 30])
    metrics = ranking_metrics(ranks, ks=(1, 5, 10, 20))
    assert metrics["HR@1"] == pytest.approx(1 / 6)
    assert metrics["HR@5"] == pytest.approx(3 / 6)
    assert metrics["HR@10"] == pytest.approx(4 / 6)
    assert metrics["HR@20"] == pytest.approx(5 / 6)
    assert metrics["NDCG@1"] == pytest.approx(1 / 6)
    assert metrics["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)
    expected_10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert metrics["NDCG@10"] == pytest.approx(expected_10)
    assert metrics["NDCG@20"] == pytest.approx(expected_10 + 1 / math.log2(12) / 6)


def test_exclude_seen_masks_exactly_the_history_rows():
    scores = torch.zeros(3, 6)
    offsets = np.array([0, 2, 2, 5])
    items = np.array([1, 4, 2, 3, 5])
    exclude_seen(scores, offsets, items)
    expected = torch.zeros(3, 6)
    expected[0, [1, 4]] = -math.inf
    expected[2, [2, 3, 5]] = -math.inf
    assert torch.equal(scores, expected)


def test_exclude_seen_on_a_slice_of_a_larger_csr():
    scores = torch.zeros(2, 5)
    offsets = np.array([0, 1, 3, 4])
    items = np.array([4, 1, 2, 3])
    exclude_seen(scores, offsets[1:], items)  # users 1 and 2 only
    assert torch.isinf(scores[0, [1, 2]]).all() and torch.isinf(scores[1, 3])
    assert torch.isinf(scores).sum() == 3


def test_random_masking_respects_padding_and_masks_every_row():
    generator = torch.Generator().manual_seed(0)
    item_seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 7]] * 50)
    masked_seq, masked = mask_random_items(item_seq, 0.3, 99, generator)
    assert not masked[item_seq == 0].any()
    assert masked.any(dim=1).all()
    assert torch.equal(masked_seq[masked], torch.full((int(masked.sum()),), 99))
    assert torch.equal(masked_seq[~masked], item_seq[~masked])
    share = masked[item_seq != 0].float().mean().item()
    assert 0.25 < share < 0.45  # 0.3 plus the forced masks of rows that drew none


def test_mask_last_item_uses_the_previous_day():
    item_seq = torch.tensor([[0, 5, 6, 7]])
    days = torch.tensor([[0, 10, 11, 12]])
    next_seq, next_days = mask_last_item(item_seq, days, 9)
    assert next_seq.tolist() == [[0, 5, 6, 9]]
    assert next_days.tolist() == [[0, 10, 11, 11]]
    assert item_seq.tolist() == [[0, 5, 6, 7]]


def test_training_next_item_rows_are_the_scoring_layout():
    """A training window's next-item row (mask_last_item) is exactly what evaluation and the engine score for the
    same history without its newest event (scoring_input): one layout, two code paths."""
    rng = np.random.default_rng(0)
    T = 6
    for length in (1, 2, 5, 6, 9):  # shorter than, equal to and longer than a window
        items, days = rng.integers(1, 50, length), rng.integers(1, 367, length)
        start = max(0, length - T)
        window_items = np.pad(items[start:], (T - (length - start), 0))
        window_days = np.pad(days[start:], (T - (length - start), 0))
        trained = mask_last_item(torch.from_numpy(window_items[None]), torch.from_numpy(window_days[None]), 99)
        # the history the window's target is predicted from: the window's events before its newest
        scored = scoring_input(items, days, np.array([start]), np.array([length - 1]), T, 99, empty_day=7)
        expected_day = days[length - 2] if length > 1 else 7
        assert scored[1][0, -1] == expected_day
        if length > 1:  # a one-event window has no previous day; training keeps the event's own
            assert trained[0].tolist() == scored[0].tolist()
            assert trained[1].tolist() == scored[1].tolist()


def test_scoring_input_of_empty_histories():
    items, days = scoring_input(np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([0, 0]), np.array([0, 0]),
                                4, 9, empty_day=123)
    assert items.tolist() == [[0, 0, 0, 9]] * 2
    assert days.tolist() == [[0, 0, 0, 123]] * 2


def test_train_config_and_model_config_describe_the_same_network():
    """The model flags have ModelConfig's defaults, and build_model_config fills every ModelConfig field from the
    flags, the data's vocabularies or the task weights."""
    for name in MODEL_FLAGS:
        assert getattr(TrainConfig(), name) == getattr(ModelConfig(), name), name

    class Sizes:  # a data set's items, users and features, all different from ModelConfig's defaults
        num_items, num_users, preference_feature = 11, 12, "tags"
        item_features = [{"name": "tags", "kind": "multi", "size": 13, "vocabulary": list("abcdefghijklm"),
                          "separator": ";"}, {"name": "price", "kind": "bucketed", "size": 14, "edges": [1.0]}]
        user_features = [{"name": "country", "kind": "categorical", "size": 5, "vocabulary": list("abcd")}]

    config = TrainConfig(hidden_size=24, num_heads=3, num_layers=1, seq_length=9, dropout=0.3, positional="learned",
                         use_item_side_info=False, use_user_tokens=False, use_temporal=False,
                         gradient_checkpointing=True, rating_prediction_weight=0.0, user_preference_weight=0.5)
    built = build_model_config(config, Sizes())
    assert {name: getattr(built, name) for name in MODEL_FLAGS} == {name: getattr(config, name) for name in MODEL_FLAGS}
    assert (built.num_items, built.num_users, built.preference_feature, built.preference_size) == (11, 12, "tags", 13)
    assert built.item_features == [{"name": "tags", "kind": "multi", "size": 13},
                                   {"name": "price", "kind": "bucketed", "size": 14}]  # what the network needs only
    assert built.user_features == [{"name": "country", "kind": "categorical", "size": 5}]
    assert (built.use_rating_head, built.use_preference_head) == (False, True)
    assert built.side_dim == ModelConfig().side_dim


def test_objective_refuses_batches_laid_out_for_the_other_task_setting():
    config = ModelConfig(num_items=8, num_users=2, item_features=ml1m_items(3), hidden_size=16, num_heads=2,
                         num_layers=1,
                         seq_length=4, side_dim=4, use_rating_head=False, use_preference_head=False)
    model = EnhancedBERT4Rec(config)
    weights = {"item_prediction": 1.0, "next_item": 1.0, "rating_prediction": 0.0, "user_preference": 0.0}
    cloze_only = make_batch(_window_tensors(), torch.tensor([0, 1]), 9, 0.5, 0.0, 0.0,
                            torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="mask_last"):
        MultiTaskObjective(model, weights)(cloze_only)
    with pytest.raises(ValueError, match="mask_last"):
        MultiTaskObjective(model, weights | {"next_item": 0.0})(make_batch(
            _window_tensors(), torch.tensor([0, 1]), 9, 0.5, 0.0, 0.0, torch.Generator().manual_seed(1),
            mask_last=True))
    assert TrainConfig(next_item_weight=0.0).next_item_on is False
    assert TrainConfig(next_item_weight=0.1).next_item_on is True


def test_learning_rate_schedule():
    assert learning_rate_factor(0, 10, 110, "cosine") == pytest.approx(0.1)
    assert learning_rate_factor(9, 10, 110, "cosine") == pytest.approx(1.0)
    assert learning_rate_factor(60, 10, 110, "cosine") == pytest.approx(0.5)
    assert learning_rate_factor(110, 10, 110, "cosine") == pytest.approx(0.0)
    assert learning_rate_factor(60, 10, 110, "linear") == pytest.approx(0.5)
    assert learning_rate_factor(100, 10, 110, "constant") == 1.0


def test_warmup_stable_decay_holds_the_peak_then_decays_linearly_over_the_last_share():
    # 100 steps after warm-up, decay over the last 20: peak through step 90 (progress 0.8), half at 100, 0 at 110
    assert learning_rate_factor(0, 10, 110, "wsd") == pytest.approx(0.1)
    assert learning_rate_factor(50, 10, 110, "wsd") == 1.0
    assert learning_rate_factor(90, 10, 110, "wsd") == pytest.approx(1.0)
    assert learning_rate_factor(100, 10, 110, "wsd") == pytest.approx(0.5)
    assert learning_rate_factor(105, 10, 110, "wsd", decay_fraction=0.1) == pytest.approx(0.5)
    assert learning_rate_factor(110, 10, 110, "wsd") == pytest.approx(0.0)
    # under a time budget the decay starts when 80% of the minutes are spent, whatever the step count says
    assert learning_rate_factor(20, 10, 110, "wsd", budget_used=0.7) == 1.0
    assert learning_rate_factor(20, 10, 110, "wsd", budget_used=0.9) == pytest.approx(0.5)
    assert learning_rate_factor(20, 10, 110, "wsd", budget_used=1.2) == pytest.approx(0.0)


def test_wsd_sqrt_decays_as_one_minus_the_square_root_of_the_decay_progress():
    # the same warm-up and stable phase as wsd; a quarter of the decay done leaves 1 - sqrt(0.25) = 0.5
    assert learning_rate_factor(0, 10, 110, "wsd_sqrt") == pytest.approx(0.1)
    assert learning_rate_factor(90, 10, 110, "wsd_sqrt") == pytest.approx(1.0)
    assert learning_rate_factor(95, 10, 110, "wsd_sqrt") == pytest.approx(0.5)
    assert learning_rate_factor(100, 10, 110, "wsd_sqrt") == pytest.approx(1 - 0.5 ** 0.5)
    assert learning_rate_factor(110, 10, 110, "wsd_sqrt") == pytest.approx(0.0)
    assert learning_rate_factor(20, 10, 110, "wsd_sqrt", budget_used=0.85) == pytest.approx(0.5)


def test_learning_rate_schedule_ends_with_the_time_budget():
    # progress is the larger of the step share and the budget share, so a time-limited run ends its decay on time
    assert learning_rate_factor(20, 10, 110, "cosine", budget_used=0.5) == pytest.approx(0.5)
    assert learning_rate_factor(20, 10, 110, "linear", budget_used=0.75) == pytest.approx(0.25)
    assert learning_rate_factor(20, 10, 110, "cosine", budget_used=1.3) == pytest.approx(0.0)
    assert learning_rate_factor(60, 10, 110, "cosine", budget_used=0.1) == pytest.approx(0.5)  # steps lead
    assert learning_rate_factor(5, 10, 110, "cosine", budget_used=0.9) == pytest.approx(0.6)  # warm-up first
    assert learning_rate_factor(20, 10, 110, "constant", budget_used=0.9) == 1.0


def test_eta_names_whichever_limit_ends_the_run_first():
    assert eta_text(epochs_done=2, epochs_left=8, elapsed=120.0, budget_left=math.inf) == \
        " | ETA 8.0 min (max_epochs)"
    assert eta_text(epochs_done=2, epochs_left=8, elapsed=120.0, budget_left=180.0) == \
        " | ETA 3.0 min (max_minutes)"
    assert eta_text(epochs_done=2, epochs_left=0, elapsed=120.0, budget_left=180.0) == ""


def test_next_steps_names_the_files_and_the_inference_command():
    text = next_steps(Path("runs/a"), "runs/a/metadata.json")
    assert f"best model: {Path('runs/a/best_model.pt')}" in text and f"{Path('runs/a/results.json')}" in text
    assert text.splitlines()[-1] == (f"next: python inference.py --model_path {Path('runs/a/best_model.pt')} "
                                     "--metadata_path runs/a/metadata.json --user_id 1 --k 10")


def test_bias_baseline_recovers_an_additive_matrix():
    users = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3])
    items = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3])
    true_user, true_item = np.array([0, 0.5, -0.5, 0.0]), np.array([0, 1.0, 0.0, -1.0])
    ratings = 3 + true_user[users] + true_item[items]
    mu, user_bias, item_bias = fit_bias_baseline(users, items, ratings, reg=0.0, iterations=50)
    np.testing.assert_allclose(mu + user_bias[users] + item_bias[items], ratings, atol=1e-9)
    assert user_bias[0] == 0 and item_bias[0] == 0  # the padding id has no ratings: bias 0, not 0/0


def _window_tensors() -> dict[str, torch.Tensor]:
    return {
        "window_items": torch.tensor([[0, 3, 4, 5], [1, 2, 3, 4]]),
        "window_ratings": torch.tensor([[0, 5, 4, 3], [1, 2, 3, 4]]),
        "window_days": torch.tensor([[0, 7, 8, 9], [1, 1, 2, 2]]),
        "window_users": torch.tensor([2, 1]),
        "user:gender": torch.tensor([0, 1, 2]),
        "user:age": torch.tensor([0, 3, 5]),
        "user:occupation": torch.tensor([0, 11, 21]),
        "user_preference_profile": torch.eye(3),
    }


def test_make_batch_gathers_windows_and_user_features():
    batch = make_batch(_window_tensors(), torch.tensor([1, 0]), 9, 0.5, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert batch["items"].tolist() == [[1, 2, 3, 4], [0, 3, 4, 5]]
    assert batch["days"].tolist() == [[1, 1, 2, 2], [0, 7, 8, 9]]
    assert torch.equal(batch["masked_seq"] == 9, batch["masked"])
    assert {k: v.tolist() for k, v in batch["user"].items()} == {
        "user_idx": [1, 2], "gender": [1, 2], "age": [3, 5], "occupation": [11, 21]}
    assert batch["genre_profile"].tolist() == [[0, 1, 0], [0, 0, 1]]


def test_make_batch_with_mask_last_masks_the_newest_position_as_at_inference():
    batch = make_batch(_window_tensors(), torch.tensor([1, 0]), 9, 0.0, 0.0, 0.0, torch.Generator().manual_seed(0),
                       mask_last=True)
    assert batch["masked_seq"].tolist() == [[1, 2, 3, 9], [0, 3, 4, 9]]
    assert batch["days"].tolist() == [[1, 1, 2, 2], [0, 7, 8, 8]]
    assert not batch["masked"].any()  # the newest position belongs to the next-item task, not the cloze task


def test_make_batch_with_mask_last_still_varies_the_older_positions():
    tensors = {**_window_tensors(), "window_items": torch.arange(1, 101).reshape(2, 50),
               "window_days": torch.ones(2, 50, dtype=torch.long), "window_ratings": torch.ones(2, 50)}
    generator = torch.Generator().manual_seed(0)
    first, second = (make_batch(tensors, torch.tensor([0, 1]), 999, 0.2, 0.0, 0.0, generator, mask_last=True)
                     for _ in range(2))
    assert (first["masked_seq"][:, -1] == 999).all() and (second["masked_seq"][:, -1] == 999).all()
    assert first["masked"].any() and not torch.equal(first["masked_seq"], second["masked_seq"])
    assert torch.equal(first["masked_seq"][:, :-1] == 999, first["masked"][:, :-1])


def test_crop_windows_keeps_a_right_aligned_prefix_of_at_least_two_events():
    lengths = torch.tensor([10, 10, 3, 2, 1, 10] * 100)
    items = torch.stack([torch.cat([torch.zeros(10 - n, dtype=torch.long), torch.arange(1, n + 1)])
                         for n in lengths.tolist()])
    window = {"items": items, "days": items * 10, "ratings": torch.where(items > 0, items % 5 + 1, 0)}
    cut = crop_windows(window, 1.0, torch.Generator().manual_seed(0))
    new_lengths = (cut["items"] != 0).sum(dim=1)
    long_enough = lengths >= 3
    assert torch.equal(new_lengths[~long_enough], lengths[~long_enough])  # 1-2 events: nothing to cut
    assert ((new_lengths[long_enough] >= 2) & (new_lengths[long_enough] < lengths[long_enough])).all()
    # row with n events kept: zeros, then the first n events in order (items 1..n), newest at the right edge
    expected = torch.stack([torch.cat([torch.zeros(10 - n, dtype=torch.long), torch.arange(1, n + 1)])
                            for n in new_lengths.tolist()])
    assert torch.equal(cut["items"], expected)
    assert torch.equal(cut["days"], expected * 10) and torch.equal(cut["ratings"], torch.where(
        expected > 0, expected % 5 + 1, 0))  # the other tensors move with the items; padding is 0
    assert set(new_lengths[lengths == 10].tolist()) == set(range(2, 10))  # every cut point 1..8 is drawn
    assert crop_windows(window, 0.0, torch.Generator().manual_seed(0))["items"].equal(items)


def test_make_batch_with_crop_varies_the_next_item_target():
    tensors = {**_window_tensors(), "window_items": torch.arange(1, 101).reshape(2, 50),
               "window_days": torch.ones(2, 50, dtype=torch.long), "window_ratings": torch.ones(2, 50)}
    generator = torch.Generator().manual_seed(0)
    targets = {make_batch(tensors, torch.tensor([0, 1]), 999, 0.2, 0.0, 0.0, generator, mask_last=True,
                          crop_prob=0.5)["items"][0, -1].item() for _ in range(40)}
    assert 50 in targets and len(targets) > 5 and targets <= set(range(2, 51))


def test_make_batch_hides_ids_and_demographics_on_request():
    generator = torch.Generator().manual_seed(0)
    hidden_ids = make_batch(_window_tensors(), torch.tensor([0, 1]), 9, 0.5, 1.0, 0.0, generator)["user"]
    assert hidden_ids["user_idx"].tolist() == [0, 0] and hidden_ids["gender"].tolist() == [2, 1]
    hidden_all = make_batch(_window_tensors(), torch.tensor([0, 1]), 9, 0.5, 1.0, 1.0, generator)["user"]
    assert all(values.tolist() == [0, 0] for values in hidden_all.values())


def test_new_user_rows_are_a_user_s_first_events_with_the_id_hidden(synthetic_ml1m_dir):
    from data_processor import load_dataset

    data = load_dataset(synthetic_ml1m_dir, seq_length=12)
    tensors = data_to_tensors(data, torch.device("cpu"))
    rows = torch.arange(len(data.window_users))
    batch = make_batch(tensors, rows, 999, 0.0, 0.0, 0.0, torch.Generator().manual_seed(0), new_user_prob=1.0)
    lengths = (batch["items"] != 0).sum(dim=1)
    assert lengths.min() >= 1 and lengths.max() <= NEW_USER_MAX_EVENTS and len(set(lengths.tolist())) > 5
    for row, user in enumerate(data.window_users.tolist()):
        timeline = data.seq_items[data.seq_offsets[user]:data.seq_offsets[user + 1]]
        n = int(lengths[row])
        assert batch["items"][row, -n:].tolist() == timeline[:n].tolist()  # the first n, newest at the right
        assert batch["ratings"][row, -n:].tolist() == data.seq_ratings[data.seq_offsets[user]:][:n].tolist()
    assert (batch["user"]["user_idx"] == 0).all() and (batch["user"]["gender"] > 0).all()  # demographics stay
    # off, the batch is drawn exactly as before the option existed (same random numbers)
    plain = make_batch(tensors, rows[:8], 999, 0.3, 0.1, 0.1, torch.Generator().manual_seed(3), mask_last=True)
    off = make_batch(tensors, rows[:8], 999, 0.3, 0.1, 0.1, torch.Generator().manual_seed(3), mask_last=True,
                     new_user_prob=0.0)
    assert all(torch.equal(plain[key], off[key]) for key in ("items", "masked_seq", "days"))
    share = make_batch(tensors, rows.repeat(20), 999, 0.0, 0.0, 0.0, torch.Generator().manual_seed(1),
                       new_user_prob=0.25)["user"]["user_idx"].eq(0).float().mean().item()
    assert 0.18 < share < 0.32


def test_objective_trains_cloze_and_next_item_rows_from_one_pass():
    config = ModelConfig(num_items=8, num_users=2, item_features=ml1m_items(3), hidden_size=16, num_heads=2,
                         num_layers=1,
                         seq_length=4, side_dim=4, use_item_side_info=False, use_preference_head=False)
    torch.manual_seed(0)
    model = EnhancedBERT4Rec(config).eval()
    weights = {"item_prediction": 1.0, "next_item": 2.0, "rating_prediction": 0.5, "user_preference": 0.0}
    batch = make_batch(_window_tensors(), torch.tensor([0, 1]), 9, 0.5, 0.0, 0.0, torch.Generator().manual_seed(1),
                       mask_last=True)
    assert batch["masked"].any()
    losses = MultiTaskObjective(model, weights)(batch)

    hidden = model(batch["masked_seq"], batch["days"], **batch["user"]).hidden
    cloze = batch["masked"]
    expected_cloze = F.cross_entropy(model.item_logits(hidden[cloze]), batch["items"][cloze])
    expected_next = F.cross_entropy(model.item_logits(hidden[:, -1]), batch["items"][:, -1])
    rows = torch.cat([hidden[cloze], hidden[:, -1]])
    items = torch.cat([batch["items"][cloze], batch["items"][:, -1]])
    users = torch.cat([batch["user"]["user_idx"].unsqueeze(1).expand(-1, 4)[cloze], batch["user"]["user_idx"]])
    true = torch.cat([batch["ratings"][cloze], batch["ratings"][:, -1]]).float()
    expected_rating = F.mse_loss(model.predict_rating(rows, items, users), true)
    assert losses["item_prediction"].item() == pytest.approx(expected_cloze.item(), rel=1e-5)
    assert losses["next_item"].item() == pytest.approx(expected_next.item(), rel=1e-5)
    assert losses["rating_prediction"].item() == pytest.approx(expected_rating.item(), rel=1e-5)
    assert losses["total"].item() == pytest.approx(
        (expected_cloze + 2.0 * expected_next + 0.5 * expected_rating).item(), rel=1e-5)
    assert "user_preference" not in losses


def test_causal_batches_predict_each_position_s_successor_without_cloze_masks():
    batch = make_batch(_window_tensors(), torch.tensor([1, 0]), 9, 0.5, 0.0, 0.0, torch.Generator().manual_seed(0),
                       mask_last=True, causal=True)
    assert batch["masked_seq"].tolist() == [[1, 2, 3, 9], [0, 3, 4, 9]]  # no cloze masks, the newest is [MASK]
    assert batch["masked"].tolist() == [[True, True, True, False], [False, True, True, False]]
    assert batch["targets"].tolist() == [[2, 3, 4, 4], [3, 4, 5, 5]]  # the successor; the newest: its own item
    assert batch["target_ratings"].tolist() == [[2, 3, 4, 4], [5, 4, 3, 3]]
    cloze = make_batch(_window_tensors(), torch.tensor([1, 0]), 9, 0.5, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(cloze["targets"], cloze["items"]) and torch.equal(cloze["target_ratings"], cloze["ratings"])


@pytest.mark.parametrize("row_bucket", [0, 4, 16])
def test_the_causal_objective_is_the_successor_cross_entropy(row_bucket):
    config = ModelConfig(num_items=8, num_users=2, item_features=ml1m_items(3), hidden_size=16, num_heads=2,
                         num_layers=1,
                         seq_length=4, side_dim=4, use_item_side_info=False, use_preference_head=False, causal=True)
    torch.manual_seed(0)
    model = EnhancedBERT4Rec(config).eval()
    weights = {"item_prediction": 1.0, "next_item": 0.5, "rating_prediction": 0.3, "user_preference": 0.0}
    batch = make_batch(_window_tensors(), torch.tensor([1, 0]), 9, 0.5, 0.0, 0.0, torch.Generator().manual_seed(1),
                       mask_last=True, causal=True)
    losses = MultiTaskObjective(model, weights, row_bucket)(batch)  # 7 target rows: padded to 8 and 16, or not
    hidden = model(batch["masked_seq"], batch["days"], **batch["user"]).hidden
    # rows by hand: (row, position) -> the item and rating after it in the window (1,2,3,4 / 0,3,4,5)
    successors = [(0, 0, 2), (0, 1, 3), (0, 2, 4), (1, 1, 4), (1, 2, 5)]
    rows = torch.stack([hidden[b, t] for b, t, _ in successors])
    expected_successor = F.cross_entropy(model.item_logits(rows), torch.tensor([item for *_, item in successors]))
    expected_next = F.cross_entropy(model.item_logits(hidden[:, -1]), torch.tensor([4, 5]))
    all_rows = torch.cat([rows, hidden[:, -1]])
    items = torch.tensor([2, 3, 4, 4, 5, 4, 5])
    users = torch.tensor([1, 1, 1, 2, 2, 1, 2])
    true = torch.tensor([2.0, 3.0, 4.0, 4.0, 3.0, 4.0, 3.0])
    expected_rating = F.mse_loss(model.predict_rating(all_rows, items, users), true)
    assert losses["item_prediction"].item() == pytest.approx(expected_successor.item(), rel=1e-5)
    assert losses["next_item"].item() == pytest.approx(expected_next.item(), rel=1e-5)
    assert losses["rating_prediction"].item() == pytest.approx(expected_rating.item(), rel=1e-5)


def test_target_index_pads_the_rows_to_the_bucket_with_repeats_of_the_first():
    is_target = torch.tensor([[False, True, True], [True, False, False]])  # flat positions 1, 2, 3
    index, real = target_index(is_target, 0)
    assert index.tolist() == [1, 2, 3] and real.tolist() == [True, True, True]
    index, real = target_index(is_target, 4)
    assert index.tolist() == [1, 2, 3, 1] and real.tolist() == [True, True, True, False]
    index, real = target_index(is_target, 3)  # already a multiple: nothing added
    assert index.tolist() == [1, 2, 3] and real.all()
    index, real = target_index(torch.zeros(2, 3, dtype=torch.bool), 4)
    assert index.numel() == 0 and real.numel() == 0


def test_padded_target_rows_change_neither_the_losses_nor_the_gradients():
    config = ModelConfig(num_items=8, num_users=2, item_features=ml1m_items(3), hidden_size=16, num_heads=2,
                         num_layers=1,
                         seq_length=4, side_dim=4, use_item_side_info=False, use_preference_head=False, causal=True)
    weights = {"item_prediction": 1.0, "next_item": 0.5, "rating_prediction": 0.3, "user_preference": 0.0}
    batch = make_batch(_window_tensors(), torch.tensor([1, 0]), 9, 0.5, 0.0, 0.0, torch.Generator().manual_seed(1),
                       mask_last=True, causal=True)
    results = []
    for row_bucket in (0, 5):  # 7 target rows -> 10: three padding rows
        torch.manual_seed(0)
        model = EnhancedBERT4Rec(config).eval()
        losses = MultiTaskObjective(model, weights, row_bucket)(batch)
        losses["total"].backward()
        results.append((losses, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (padded, padded_grads) = results
    assert plain.keys() == padded.keys() and plain_grads.keys() == padded_grads.keys()
    for task in plain:
        assert padded[task].item() == pytest.approx(plain[task].item(), rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_one_process_shuffles_every_window_as_before():
    shard = window_shard(np.repeat(np.arange(1, 8), 15), 0, 1)
    assert shard == (0, 105, 105)
    batches = list(epoch_batches(shard, 8, torch.Generator().manual_seed(5)))
    assert torch.equal(torch.cat(batches), torch.randperm(105, generator=torch.Generator().manual_seed(5)))
    assert [len(b) for b in batches] == [8] * 13 + [1]


def test_ranks_get_blocks_of_whole_users_and_train_as_many_windows_each():
    # users 1..6 with 5, 9, 2, 7, 4 and 6 windows (33 in all); equal shares would cut at window 16
    window_users = np.repeat(np.arange(1, 7), [5, 9, 2, 7, 4, 6])
    shards = [window_shard(window_users, rank, 2) for rank in (0, 1)]
    assert shards == [(0, 16, 16), (16, 33, 16)]  # window 16 is user 4's first: no user is cut
    three = [window_shard(window_users, rank, 3) for rank in (0, 1, 2)]
    # shares at 11 and 22 fall inside users 2 (windows 5-13) and 4 (16-22): moved back to their first windows
    assert three == [(0, 5, 5), (5, 16, 5), (16, 33, 5)]
    for shard in three:
        assert len(set(window_users[shard.start:shard.stop]) & set(window_users[:shard.start])) == 0
        rows = torch.cat(list(epoch_batches(shard, 2, torch.Generator().manual_seed(0))))
        assert len(rows) == 5 and len(set(rows.tolist())) == 5 and rows.max() < shard.stop - shard.start
    with pytest.raises(ConfigError, match="33 training windows cannot be shared by 7 processes"):
        window_shard(window_users, 0, 7)


def test_a_rank_s_tensors_hold_its_windows_only(synthetic_ml1m_dir):
    data = load_dataset(synthetic_ml1m_dir, seq_length=8, verify=False)
    shard = window_shard(data.window_users, 1, 2)
    tensors = data_to_tensors(data, torch.device("cpu"), shard)
    assert len(tensors["window_items"]) == shard.stop - shard.start
    assert np.array_equal(tensors["window_items"].numpy(), data.window_items[shard.start:shard.stop])
    for user in np.unique(data.window_users[shard.start:shard.stop]):  # each user's first window, in the block
        first = int(tensors["user_first_window"][user])
        assert data.window_users[shard.start + first] == user
        assert first == 0 or data.window_users[shard.start + first - 1] != user


