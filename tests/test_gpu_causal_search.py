"""benchmarks/gpu_causal_search.py without a GPU: every run's flags parse as trainer.py parses them (a typo would
cost a GPU lease), and the table reads hand-made results.json files."""

import json
from pathlib import Path

import pytest

from benchmarks.gpu_causal_search import COMMON, SETS, run_dirs, table
from train_config import parse_args


@pytest.mark.parametrize("set_name", sorted(SETS))
def test_every_run_parses_as_trainer_flags(set_name):
    for name, (flags, seeds) in SETS[set_name].items():
        config = parse_args([*COMMON, *flags, "--seed", "0", "--max_minutes", "4"])
        assert config.causal and config.lr_schedule == "wsd" and config.amp == "bf16", name
        assert config.patience >= config.max_epochs, name  # the budget ends every run, not early stopping
        plain = name.startswith("plain")
        assert config.use_item_side_info == config.use_temporal == (not plain), name
        assert config.use_user_tokens == (not plain and "nouser" not in name), name
        assert seeds, name


def test_the_third_lease_runs_the_config_file_chosen_on_validation():
    config = parse_args([*COMMON, *SETS["lease3"]["full_h256_t100_crop"][0]])
    assert (config.hidden_size, config.num_layers, config.seq_length, config.next_item_crop) == (256, 4, 100, 0.5)
    plain = parse_args([*COMMON, *SETS["lease3"]["plain_h256_t100_crop"][0]])
    assert not (plain.use_item_side_info or plain.use_user_tokens or plain.use_temporal)
    assert (plain.hidden_size, plain.seq_length, plain.next_item_crop) == (256, 100, 0.5)


def write_result(folder: Path, seed: int, ndcg10: float, epochs: int, seconds: float) -> None:
    folder.mkdir(parents=True)
    test = {"NDCG@10": ndcg10, "HR@10": 2 * ndcg10, "NDCG@20": 1.2 * ndcg10, "HR@20": 2.5 * ndcg10,
            "rating_rmse": 0.9}
    (folder / "results.json").write_text(json.dumps({
        "test": test, "validation": {"NDCG@10": ndcg10 + 0.01}, "epochs_run": epochs, "best_epoch": epochs - 1,
        "train_seconds": seconds, "device": "cuda", "machine": "m", "train_config": {"seed": seed}}))


def test_table_means_spread_and_unfinished_rows(tmp_path):
    write_result(tmp_path / "full_h256_t100_crop_seed0", 0, 0.20, 20, 200.0)
    write_result(tmp_path / "full_h256_t100_crop_seed1", 1, 0.19, 10, 200.0)
    lines = table(SETS["lease3"], tmp_path).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines}
    full = rows["full_h256_t100_crop"]
    assert full[1:5] == ["0,1", "0.1950 (0.0100)", "0.3900", "0.2340"]
    assert full[6:9] == ["0.2100 / 0.2000", "20 (19) / 10 (9)", "15.0"]  # 10 s and 20 s per epoch
    assert rows["plain_h256_t100_crop"][2] == "not finished"
    assert [path.name for _, _, _, path in run_dirs(SETS["lease3"], tmp_path, ["plain_h256_t100_crop"])] == [
        f"plain_h256_t100_crop_seed{seed}" for seed in (0, 1, 2)]
