"""The sampled item loss (--item_loss sampled): the logQ-corrected sampled softmax against hand-computed answers,
its proposal, its scores under both item heads, a tiny training run and the benchmark of its gradient against the
full softmax's; the full softmax unchanged."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, ml1m_items

from benchmarks.bench_train import training_run
from benchmarks.sampled_gradient import gradients, loss_rows, measure
from enhanced_model import EnhancedBERT4Rec, ModelConfig
from trainer import (
    MultiTaskObjective,
    draw_negatives,
    make_batch,
    parse_args,
    sampled_softmax_nll,
    softmax_chunk_rows,
    softmax_nll,
    train,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_model(**overrides) -> EnhancedBERT4Rec:
    config = ModelConfig(**{**dict(num_items=40, num_users=10, item_features=ml1m_items(7), hidden_size=16, num_heads=2,
                                   num_layers=1, seq_length=6, side_dim=4), **overrides})
    torch.manual_seed(0)
    return EnhancedBERT4Rec(config).train()


def test_the_logq_correction_by_hand():
    # two rows, three negatives: items 5, 7 and 5 again (drawn with replacement); row 1's target is 7
    target_logits = torch.tensor([2.0, 0.5])
    negative_logits = torch.tensor([[1.0, 3.0, 1.0], [0.0, -1.0, 0.0]])
    q = {3: 0.1, 5: 0.25, 7: 0.5}
    target_log_q = torch.log(torch.tensor([q[3], q[7]]))
    negative_log_q = torch.log(torch.tensor([q[5], q[7], q[5]]))
    hits = torch.tensor([[False, False, False], [False, True, False]])
    nll = sampled_softmax_nll(target_logits, negative_logits, target_log_q, negative_log_q, hits)
    # row 0: target 3; every logit minus log q
    row0 = [2.0 - math.log(0.1), 1.0 - math.log(0.25), 3.0 - math.log(0.5), 1.0 - math.log(0.25)]
    expected0 = math.log(sum(math.exp(v) for v in row0)) - row0[0]
    # row 1: target 7; the negative that is item 7 is an accidental hit, left out
    row1 = [0.5 - math.log(0.5), 0.0 - math.log(0.25), 0.0 - math.log(0.25)]
    expected1 = math.log(sum(math.exp(v) for v in row1)) - row1[0]
    assert nll.tolist() == pytest.approx([expected0, expected1], rel=1e-6)


def test_accidental_hits_are_masked_whatever_their_logit():
    target_logits = torch.tensor([1.0])
    negative_logits = torch.tensor([[0.0, 50.0, 0.0]])  # the middle negative is the target itself, scored high
    log_q = torch.zeros(3)
    masked = sampled_softmax_nll(target_logits, negative_logits, torch.zeros(1), log_q,
                                 torch.tensor([[False, True, False]]))
    assert masked.item() == pytest.approx(math.log(math.exp(1) + 2) - 1, rel=1e-6)
    unmasked = sampled_softmax_nll(target_logits, negative_logits, torch.zeros(1), log_q, torch.zeros(1, 3).bool())
    assert unmasked.item() > 48


def reference_nll(target_logits, negative_logits, target_log_q, negative_log_q, hits):
    """The sampled softmax written out with autograd's own ops: logsumexp over [target, negatives] - target."""
    negatives = (negative_logits - negative_log_q).masked_fill(hits, float("-inf"))
    logits = torch.cat([(target_logits - target_log_q).unsqueeze(1), negatives], dim=1)
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_the_fused_loss_matches_autograd_s_own_ops_in_value_and_gradient(scale):
    generator = torch.Generator().manual_seed(0)
    rows, negatives = 9, 7
    target_logits = (scale * torch.randn(rows, generator=generator, dtype=torch.float64)).requires_grad_()
    negative_logits = (scale * torch.randn(rows, negatives, generator=generator, dtype=torch.float64)).requires_grad_()
    target_log_q = torch.rand(rows, generator=generator, dtype=torch.float64).log()
    negative_log_q = torch.rand(negatives, generator=generator, dtype=torch.float64).log()
    hits = torch.rand(rows, negatives, generator=generator) < 0.2
    hits[3] = True  # every negative of a row an accidental hit: the loss is 0, its gradients too
    upstream = torch.rand(rows, generator=generator, dtype=torch.float64)
    inputs = (target_logits, negative_logits, target_log_q, negative_log_q, hits)
    fused, reference = sampled_softmax_nll(*inputs), reference_nll(*inputs)
    torch.testing.assert_close(fused, reference)
    assert fused[3].item() == 0.0
    fused_grads = torch.autograd.grad(fused, [target_logits, negative_logits], upstream)
    reference_grads = torch.autograd.grad(reference, [target_logits, negative_logits], upstream)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(fused_grad, reference_grad)
    assert (fused_grads[1][hits] == 0).all()
    assert torch.autograd.gradcheck(lambda t, n: sampled_softmax_nll(t, n, target_log_q, negative_log_q, hits),
                                    (target_logits, negative_logits))


def test_bf16_negative_scores_give_the_fp32_loss_of_their_values_and_a_bf16_gradient():
    generator = torch.Generator().manual_seed(1)
    target_logits = torch.randn(5, generator=generator)
    negative_logits = (4 * torch.randn(5, 6, generator=generator)).bfloat16().requires_grad_()
    log_q = torch.rand(6, generator=generator).log()
    hits = torch.zeros(5, 6, dtype=torch.bool)
    hits[0, 2] = True
    fused = sampled_softmax_nll(target_logits, negative_logits, torch.zeros(5), log_q, hits)
    upcast = negative_logits.detach().float().requires_grad_()
    reference = reference_nll(target_logits, upcast, torch.zeros(5), log_q, hits)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference)
    (fused_grad,) = torch.autograd.grad(fused.sum(), [negative_logits])
    (reference_grad,) = torch.autograd.grad(reference.sum(), [upcast])
    assert fused_grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused_grad, reference_grad.bfloat16())


def test_the_full_softmax_loss_is_cross_entropy_in_value_and_gradient():
    generator = torch.Generator().manual_seed(2)
    logits = (10 * torch.randn(8, 13, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = torch.tensor([0, 12, 5, 5, 3, 12, 7, 1])
    upstream = torch.rand(8, generator=generator, dtype=torch.float64)
    fused, reference = softmax_nll(logits, targets), F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(*(torch.autograd.grad(loss, [logits], upstream)[0] for loss in (fused, reference)))
    assert torch.autograd.gradcheck(lambda x: softmax_nll(x, targets), (logits,))
    # bf16 logits: the fp32 loss of their values, a bf16 gradient
    low = logits.detach().bfloat16().requires_grad_()
    upcast = low.detach().float().requires_grad_()
    fused, reference = softmax_nll(low, targets), F.cross_entropy(upcast, targets, reduction="none")
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference)
    (fused_grad,) = torch.autograd.grad(fused.sum(), [low])
    (reference_grad,) = torch.autograd.grad(reference.sum(), [upcast])
    assert fused_grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused_grad, reference_grad.bfloat16())
    # rounded once: exactly the fp32 gradient of the same values, cast to bf16 (no bf16 arithmetic in between)
    (fp32_grad,) = torch.autograd.grad(softmax_nll(upcast, targets).sum(), [upcast])
    assert torch.equal(fused_grad, fp32_grad.bfloat16())


def test_the_full_softmax_loss_in_chunks_of_rows_gives_the_same_bits():
    generator = torch.Generator().manual_seed(3)
    logits = (20 * torch.randn(300, 5000, generator=generator)).bfloat16()
    targets = torch.randint(0, 5000, (300,), generator=generator)
    upstream = torch.rand(300, generator=generator)
    assert 1 < softmax_chunk_rows(logits) < 300  # the default splits these rows into several chunks
    results = []
    for chunk_rows in (None, 300, 7):  # the default, one chunk, and chunks whose last one is short
        leaf = logits.clone().requires_grad_()
        loss = softmax_nll(leaf, targets, chunk_rows)
        results.append((loss, *torch.autograd.grad(loss, [leaf], upstream)))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
    torch.testing.assert_close(results[0][0], F.cross_entropy(logits.float(), targets, reduction="none"))
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        softmax_nll(logits, targets, 0)


def test_label_smoothing_is_cross_entropy_s_in_value_and_gradient():
    # by hand: three equal logits, target 0, e = 0.3: loss log 3; gradient p - (1 - e) [target] - e / 3
    flat = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    loss = softmax_nll(flat, torch.tensor([0]), label_smoothing=0.3)
    torch.testing.assert_close(loss, torch.tensor([math.log(3)], dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), [flat])
    torch.testing.assert_close(grad, torch.tensor([[1 / 3 - 0.7 - 0.1, 1 / 3 - 0.1, 1 / 3 - 0.1]],
                                                  dtype=torch.float64))
    generator = torch.Generator().manual_seed(4)
    logits = (10 * torch.randn(9, 13, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = torch.tensor([0, 12, 5, 5, 3, 12, 7, 1, 2])
    upstream = torch.rand(9, generator=generator, dtype=torch.float64)
    for chunk_rows in (None, 2):
        fused = softmax_nll(logits, targets, chunk_rows, label_smoothing=0.1)
        reference = F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)
        torch.testing.assert_close(fused, reference)
        torch.testing.assert_close(*(torch.autograd.grad(loss, [logits], upstream)[0] for loss in (fused, reference)))
    assert torch.autograd.gradcheck(lambda x: softmax_nll(x, targets, 4, 0.25), (logits,))
    # bf16 logits: the fp32 loss of their values and its fp32 gradient rounded once
    low = logits.detach().bfloat16().requires_grad_()
    upcast = low.detach().float().requires_grad_()
    fused = softmax_nll(low, targets, label_smoothing=0.1)
    torch.testing.assert_close(fused, F.cross_entropy(upcast, targets, reduction="none", label_smoothing=0.1))
    (fp32_grad,) = torch.autograd.grad(softmax_nll(upcast, targets, label_smoothing=0.1).sum(), [upcast])
    assert torch.equal(torch.autograd.grad(fused.sum(), [low])[0], fp32_grad.bfloat16())
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        softmax_nll(logits, targets, label_smoothing=1.0)


@pytest.mark.parametrize("cosine_temperature,side_output", [(0.0, False), (0.05, False), (0.0, True)])
def test_every_item_once_with_a_uniform_q_is_the_full_softmax(cosine_temperature, side_output):
    model = tiny_model(cosine_temperature=cosine_temperature, item_side_output=side_output)
    num_items = model.config.num_items
    rows = torch.randn(6, 16, requires_grad=True)
    targets = torch.tensor([1, 7, 40, 3, 3, 22])
    every_item = torch.arange(1, num_items + 1)
    target_logits, negative_logits = model.sampled_item_logits(rows, targets, every_item)
    uniform = torch.full((num_items,), -math.log(num_items))
    sampled = sampled_softmax_nll(target_logits, negative_logits, uniform[targets - 1], uniform,
                                  every_item.unsqueeze(0) == targets.unsqueeze(1))
    full = F.cross_entropy(model.real_item_logits(rows), targets - 1, reduction="none")
    torch.testing.assert_close(sampled, full, rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(loss.mean(), [rows, model.item_embedding.weight]) for loss in (sampled, full)]
    for sampled_grad, full_grad in zip(*grads, strict=True):
        torch.testing.assert_close(sampled_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_the_proposal_mixes_the_step_s_targets_and_the_uniform_catalogue():
    targets = torch.tensor([4, 4, 4, 9])  # item 4 is 3 of the 4 rows' target, item 9 one
    negatives, log_q = draw_negatives(targets, 10, 8, torch.Generator().manual_seed(0))
    assert negatives.shape == (8,) and set(negatives[:4].tolist()) <= {4, 9}
    assert negatives.min() >= 1 and negatives.max() <= 10
    expected = {4: 0.5 * 3 / 4 + 0.5 / 10, 9: 0.5 * 1 / 4 + 0.5 / 10, 1: 0.5 / 10}
    assert log_q(torch.tensor([4, 9, 1])).exp().tolist() == pytest.approx(list(expected.values()))
    assert log_q(torch.arange(1, 11)).exp().sum().item() == pytest.approx(1.0)  # a distribution over the items
    uniform_only, log_q = draw_negatives(torch.tensor([], dtype=torch.long), 10, 8, torch.Generator().manual_seed(0))
    assert uniform_only.shape == (8,) and log_q(torch.tensor([4])).exp().item() == pytest.approx(0.1)


def test_the_proposal_s_frequencies_are_its_q():
    targets = torch.tensor([2, 2, 5, 7, 7, 7])
    negatives, log_q = draw_negatives(targets, 8, 200_000, torch.Generator().manual_seed(1))
    frequency = torch.bincount(negatives, minlength=9)[1:] / negatives.numel()
    torch.testing.assert_close(frequency, log_q(torch.arange(1, 9)).exp(), atol=3e-3, rtol=0)


def two_window_batch() -> dict:
    """A causal batch of two windows of the tiny model's 40 items, the newest position masked."""
    windows = {
        "window_items": torch.tensor([[0, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6]]),
        "window_ratings": torch.tensor([[0, 5, 4, 3, 4, 4], [1, 2, 3, 4, 5, 5]]),
        "window_days": torch.tensor([[0, 7, 8, 9, 9, 9], [1, 1, 2, 2, 3, 3]]),
        "window_users": torch.tensor([2, 1]), "user:gender": torch.tensor([0, 1, 2]),
        "user:age": torch.tensor([0, 3, 5]), "user:occupation": torch.tensor([0, 11, 21]),
        "user_preference_profile": torch.eye(3),
    }
    return make_batch(windows, torch.tensor([0, 1]), 41, 0.5, 0.0, 0.0, torch.Generator().manual_seed(1),
                      mask_last=True, causal=True)


@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("cosine_temperature", [0.0, 0.05])
def test_the_objective_trains_with_sampled_negatives(cosine_temperature, amp):
    model = tiny_model(cosine_temperature=cosine_temperature, use_item_side_info=False, use_preference_head=False,
                       dropout=0.0)
    weights = {"item_prediction": 1.0, "next_item": 0.5, "rating_prediction": 0.3, "user_preference": 0.0}
    batch = two_window_batch()
    objective = MultiTaskObjective(model, weights, 8, num_negatives=16, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", torch.bfloat16, enabled=amp == "bf16"):
        losses = objective(batch)
    assert all(torch.isfinite(loss) and loss.dtype == torch.float32 for loss in losses.values())
    losses["total"].backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0 and model.item_head.bias.grad.abs().sum() > 0
    # the rating loss does not depend on how the item loss is computed
    full = MultiTaskObjective(model, weights, 8)(batch)
    if amp == "off":
        assert full["rating_prediction"].item() == losses["rating_prediction"].item()


def tiny_config(data_dir: Path, out: Path, *extra: str):
    return parse_args([*TINY, "--data_dir", str(data_dir), "--checkpoint_dir", str(out / "checkpoints"),
                       "--metadata_path", str(out / "metadata.json"), "--cache_dir", str(out / "cache"), *extra])


def test_a_sampled_run_trains_and_the_full_softmax_is_unchanged(synthetic_ml1m_dir, tmp_path):
    flags = ("--max_epochs", "2", "--deterministic", "--seed", "5")
    _, sampled = train(tiny_config(synthetic_ml1m_dir, tmp_path / "sampled", *flags, "--item_loss", "sampled",
                                   "--num_negatives", "32"))
    assert (sampled["train_config"]["item_loss"], sampled["train_config"]["num_negatives"]) == ("sampled", 32)
    item_losses = [record["item_prediction"] for record in sampled["history"]]
    assert all(math.isfinite(loss) for loss in item_losses) and item_losses[-1] < item_losses[0]
    assert 0 <= sampled["test"]["NDCG@10"] <= 1  # evaluated by the full ranking, as every run
    _, plain = train(tiny_config(synthetic_ml1m_dir, tmp_path / "plain", *flags))
    _, full = train(tiny_config(synthetic_ml1m_dir, tmp_path / "full", *flags, "--item_loss", "full"))
    assert plain["train_config"]["item_loss"] == "full"
    def losses_and_metrics(results: dict) -> list[dict]:
        return [{key: value for key, value in record.items() if key != "train_seconds"}
                for record in results["history"]]

    assert losses_and_metrics(full) == losses_and_metrics(plain) and full["test"] == plain["test"]  # bit-identical
    assert losses_and_metrics(full) != losses_and_metrics(sampled)


def test_label_smoothing_reaches_the_objective_s_item_loss(synthetic_ml1m_dir, tmp_path):
    model = tiny_model(cosine_temperature=0.05, use_preference_head=False, dropout=0.0)
    weights = {"item_prediction": 1.0, "next_item": 0.5, "rating_prediction": 0.3, "user_preference": 0.0}
    rows = torch.randn(6, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    targets, real = torch.tensor([1, 5, 9, 9, 20, 2]), torch.ones(6, dtype=torch.bool)
    logits = model.real_item_logits(rows).float()
    for smoothing in (0.0, 0.2):
        nll = MultiTaskObjective(model, weights, 8, label_smoothing=smoothing).item_nll(rows, targets, real)
        torch.testing.assert_close(nll, F.cross_entropy(logits, targets - 1, reduction="none",
                                                        label_smoothing=smoothing))
    flags = ("--max_epochs", "1", "--deterministic", "--seed", "5")
    _, plain = train(tiny_config(synthetic_ml1m_dir, tmp_path / "plain", *flags))
    _, smoothed = train(tiny_config(synthetic_ml1m_dir, tmp_path / "smoothed", *flags, "--label_smoothing", "0.1"))
    assert smoothed["train_config"]["label_smoothing"] == 0.1
    assert smoothed["history"][0]["item_prediction"] != plain["history"][0]["item_prediction"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "trainer.py"), *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("flags,message", [
    (["--num_negatives", "0"], "--num_negatives must be positive"),
    (["--item_loss", "approximate"], "invalid choice: 'approximate'"),
])
def test_bad_values_are_refused_by_the_preflight_in_one_line(flags, message, tmp_path):
    refused = run_cli(*flags, "--data_dir", str(tmp_path / "nowhere"), "--checkpoint_dir", str(tmp_path / "c"))
    assert refused.returncode == 2 and message in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr


def test_as_many_negatives_as_items_trains_the_full_softmax_and_says_so(synthetic_ml1m_dir, tmp_path):
    """The number of items is known once the data is read: with no fewer items than negatives (the synthetic data
    has 108), the full softmax is exact and no dearer, so the run trains it, says why, and records it; one
    negative fewer keeps the sampled loss."""
    common = [*TINY, "--max_epochs", "1", "--item_loss", "sampled", "--data_dir", str(synthetic_ml1m_dir),
              "--cache_dir", str(tmp_path / "cache")]
    for negatives, loss in (("108", "full"), ("107", "sampled")):
        done = run_cli(*common, "--num_negatives", negatives, "--checkpoint_dir", str(tmp_path / negatives))
        assert done.returncode == 0, done.stderr
        note = f"note: --num_negatives {negatives} is not fewer than the 108 items: the full softmax is exact"
        assert (note in done.stdout) is (loss == "full")
        results = json.loads((tmp_path / negatives / "results.json").read_text())
        assert results["train_config"]["item_loss"] == loss


def uses_of(loss: torch.Tensor, parameter: torch.Tensor) -> int:
    """How many edges of loss's autograd graph lead into parameter: one per lookup or other use of it."""
    seen, stack, uses = set(), [loss.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None and getattr(child, "variable", None) is parameter:
                uses += 1
            stack.append(child)
    return uses


@pytest.mark.parametrize("item_side_output", [False, True])
@pytest.mark.parametrize("num_negatives", [0, 16])
def test_a_step_looks_every_item_row_up_once_with_the_same_losses_and_gradients(num_negatives, item_side_output):
    model = tiny_model(cosine_temperature=0.05, use_preference_head=False, dropout=0.0,
                       item_side_output=item_side_output)
    weights = {"item_prediction": 1.0, "next_item": 0.5, "rating_prediction": 0.3, "user_preference": 0.0}
    batch = two_window_batch()
    objective = MultiTaskObjective(model, weights, 8, num_negatives=num_negatives,
                                   generator=torch.Generator().manual_seed(2))
    losses = objective(batch)
    table = model.item_embedding.weight
    # the sampled loss reads the table through one lookup; the full softmax also scores the whole table
    assert uses_of(losses["total"], table) == 1 + (num_negatives == 0)
    losses["total"].backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # the same step with a lookup per use, through the model's own methods
    model.zero_grad()
    item_seq = batch["masked_seq"]
    hidden = model(item_seq, batch["days"], **batch["user"]).hidden
    next_position = torch.zeros_like(batch["masked"])
    next_position[:, -1] = True
    rows_at = batch["masked"] | next_position
    rows, targets = hidden[rows_at], batch["targets"][rows_at]
    is_next = next_position[rows_at]
    if num_negatives:
        negatives, log_q = draw_negatives(targets, 40, num_negatives, torch.Generator().manual_seed(2))
        target_logits, negative_logits = model.sampled_item_logits(rows, targets, negatives)
        nll = sampled_softmax_nll(target_logits, negative_logits, log_q(targets), log_q(negatives),
                                  negatives.unsqueeze(0) == targets.unsqueeze(1))
    else:
        nll = softmax_nll(model.real_item_logits(rows), targets - 1)
    users = batch["user"]["user_idx"].unsqueeze(1).expand_as(item_seq)[rows_at]
    rating = (model.predict_rating(rows, targets, users) - batch["target_ratings"][rows_at].float()).square().mean()
    expected = {"item_prediction": nll[~is_next].mean(), "next_item": nll[is_next].mean(), "rating_prediction": rating}
    for task, loss in expected.items():
        torch.testing.assert_close(losses[task], loss)
    sum(weights[task] * loss for task, loss in expected.items()).backward()
    assert uses_of(rating, table) == 2  # the reference did look the rows up separately
    for name, p in model.named_parameters():
        if name in gradients:
            torch.testing.assert_close(gradients[name], p.grad, msg=name)


def test_the_gradient_benchmark_finds_the_full_softmax_s_gradient_as_the_draws_cover_the_catalogue(
        synthetic_ml1m_dir, tmp_path):
    threads = torch.get_num_threads()
    try:  # training_run sets the process's thread count
        run, batches = training_run([*TINY, "--amp", "off", "--cache_dir", str(tmp_path / "cache")],
                                    str(synthetic_ml1m_dir), 1)
    finally:
        torch.set_num_threads(threads)
    run.objective.eval()
    num_items = run.objective.model.config.num_items
    # the full softmax against itself: the same gradient exactly
    rows, targets, real = loss_rows(run, next(batches))
    first, second = gradients(run, rows, targets, real, 0), gradients(run, rows, targets, real, 0)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # 200,000 draws over the synthetic catalogue: every item drawn, thousands of times; the gradients are close, and
    # the loss is the full one plus log(N q(target)) on average (the target's logQ correction, constant per row)
    many = measure(run, batches, [200_000], 1, 2)[200_000]
    assert many["rows_touched"] == 1.0 and many["row_cosine"] > 0.99 and many["table_error"] < 0.1
    *_, sampled_loss = gradients(run, rows, targets, real, 200_000)
    real_targets = targets[real]
    q = 0.5 * (real_targets.unsqueeze(1) == real_targets).double().mean(1) + 0.5 / num_items
    assert sampled_loss - first[2] == pytest.approx(torch.log(200_000 * q).mean().item(), abs=0.02)
    # two negatives: the batch's targets and at most two drawn items get a gradient, nothing else
    rows, targets, real = loss_rows(run, next(batches))
    touched = int((gradients(run, rows, targets, real, 2)[1] != 0).any(1).sum())
    distinct_targets = targets[real].unique().numel()
    assert distinct_targets <= touched <= distinct_targets + 2 < num_items
    assert measure(run, batches, [2], 1, 2)[2]["table_error"] > many["table_error"]
