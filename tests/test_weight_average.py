"""--ema_decay: the moving average of the weights, by hand on a tiny module and end to end in tiny runs."""

import pytest
import torch
from test_trainer import tiny_config

from benchmarks.weight_average import compare
from trainer import WeightAverage, load_checkpoint, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_average_follows_the_hand_computed_warm_up_and_decay():
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = WeightAverage(layer, decay=0.9)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, -4.0], start=1):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update()
        kept = min(0.9, (1 + step) / (10 + step))  # 2/11, 3/12, 4/13: the warm-up, under the decay
        expected = kept * expected + (1 - kept) * value
        assert average.average["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(-4 * 9 / 13 + (2 * 3 / 4 + 9 / 11 / 4) * 4 / 13)
    average.updates = 1000  # past the warm-up the decay itself is kept: 0.9 old + 0.1 new
    with torch.no_grad():
        layer.weight.fill_(10.0)
    average.update()
    assert average.average["weight"].item() == pytest.approx(0.9 * expected + 1.0, rel=1e-6)
    assert layer.weight.item() == 10.0  # the raw weights are never touched by an update


def test_applied_swaps_the_average_in_and_the_raw_weights_back_even_after_an_error():
    layer = torch.nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.5)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(1.0)
    raw = {name: p.detach().clone() for name, p in layer.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"), average.applied():
        for name, parameter in layer.named_parameters():
            assert torch.equal(parameter, average.average[name]) and not torch.equal(parameter, raw[name])
        raise RuntimeError("inside")
    for name, parameter in layer.named_parameters():
        assert torch.equal(parameter, raw[name])


def test_a_run_validates_and_keeps_the_average_and_trains_the_raw_weights_unchanged(synthetic_ml1m_dir, tmp_path):
    """The average never feeds back into the training: the raw weights after a run equal those of the same run
    without it. best_model.pt holds the average (what inference and the test figures read), last.pt the raw
    weights with the average beside them."""
    plain_out, averaged_out = tmp_path / "plain", tmp_path / "averaged"
    _, plain = train(tiny_config(synthetic_ml1m_dir, plain_out, "--max_epochs", "1", "--deterministic"))
    _, averaged = train(tiny_config(synthetic_ml1m_dir, averaged_out, "--max_epochs", "1", "--deterministic",
                                    "--ema_decay", "0.9"))
    plain_last = load_checkpoint(plain_out / "checkpoints" / "last.pt")
    last = load_checkpoint(averaged_out / "checkpoints" / "last.pt")
    best = load_checkpoint(averaged_out / "checkpoints" / "best_model.pt")
    assert last["weight_average"]["updates"] == last["step"] > 0 and last["weight_average"]["decay"] == 0.9
    assert "average" not in best["weight_average"]  # its weights are the average
    for name, tensor in plain_last["model_state"].items():
        assert torch.equal(last["model_state"][name], tensor), name
    differ = 0
    for name, tensor in last["weight_average"]["average"].items():
        assert torch.equal(best["model_state"][name], tensor), name
        differ += not torch.equal(tensor, last["model_state"][name])
    assert differ > 0
    assert averaged["train_config"]["ema_decay"] == 0.9
    assert averaged["test"] != plain["test"]
    assert [r["total"] for r in averaged["history"]] == [r["total"] for r in plain["history"]]
    # benchmarks/weight_average.py evaluates both sets of last.pt's weights: the raw ones are the plain run's, the
    # average is best_model.pt's (one epoch: the best is the last), so each test figure is a run's results.json's
    figures = compare(averaged_out / "checkpoints" / "last.pt")
    for weights, run in (("raw", plain), ("average", averaged)):
        assert figures[weights]["test"] == {name: run["test"][name] for name in figures[weights]["test"]}
        assert figures[weights]["val"]["NDCG@10"] == run["validation"]["NDCG@10"]


def test_a_resumed_run_continues_the_average_bit_exactly(synthetic_ml1m_dir, tmp_path):
    flags = ("--deterministic", "--ema_decay", "0.95", "--lr_schedule", "constant")  # the same lr whatever the epochs
    _, straight = train(tiny_config(synthetic_ml1m_dir, tmp_path / "straight", "--max_epochs", "2", *flags))
    folder = tmp_path / "stopped" / "checkpoints"
    train(tiny_config(synthetic_ml1m_dir, tmp_path / "stopped", "--max_epochs", "1", *flags))
    _, resumed = train(tiny_config(synthetic_ml1m_dir, tmp_path / "stopped", "--max_epochs", "2", *flags,
                                   "--resume", str(folder / "last.pt")))
    expected = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    actual = load_checkpoint(folder / "last.pt")
    assert actual["weight_average"]["updates"] == expected["weight_average"]["updates"] == expected["step"]
    for name, tensor in expected["weight_average"]["average"].items():
        assert torch.equal(actual["weight_average"]["average"][name], tensor), name
    assert resumed["test"] == straight["test"]
    assert [r.get("val_NDCG@10") for r in resumed["history"]] == [r.get("val_NDCG@10") for r in straight["history"]]
