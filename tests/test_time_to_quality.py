"""benchmarks/time_to_quality.py's table on hand-made results.json histories (no training)."""

import json
from pathlib import Path

from benchmarks.time_to_quality import best_by, run_dir, table


def result(seed: int, ndcg_by_epoch: list[float], seconds_per_epoch: float, test_ndcg: float) -> dict:
    history = [{"epoch": e, "train_seconds": seconds_per_epoch * e, "val_NDCG@10": v}
               for e, v in enumerate(ndcg_by_epoch, start=1)]
    best = max(range(len(ndcg_by_epoch)), key=ndcg_by_epoch.__getitem__) + 1
    return {"test": {"NDCG@10": test_ndcg, "HR@10": 2 * test_ndcg}, "history": history, "best_epoch": best,
            "epochs_run": len(history), "train_seconds": seconds_per_epoch * len(history), "peak_rss_mb": 700.0 + seed,
            "train_config": {"seed": seed}, "device": "cpu", "machine": "m"}


def test_best_by_takes_the_best_epoch_finished_within_the_time():
    history = result(0, [0.05, 0.09, 0.08, 0.11], 100.0, 0.1)["history"]
    assert best_by(history, 99.0) is None and best_by(history, 250.0) == 0.09 and best_by(history, 400.0) == 0.11


def test_table_means_spreads_and_budget_columns(tmp_path):
    runs = {"today": [result(0, [0.02, 0.04, 0.06, 0.07], 200.0, 0.06), result(1, [0.03, 0.05, 0.05, 0.08], 200.0,
                                                                                    0.08)],
            "budget": [result(0, [0.05, 0.10, 0.12, 0.13], 200.0, 0.125)]}
    lines = table(runs, budget_minutes=800 / 60).splitlines()
    assert lines[0].count("val NDCG@10 by") == 3 and "by 13.3333 min" in lines[0]
    today = lines[2].split(" | ")
    # test mean and spread; best validation by 200 s (epoch 1), 400 s (epoch 2), 800 s (all four)
    assert today[1:8] == ["0,1", "0.0700 (0.0200)", "0.1400", "0.0250", "0.0450", "0.0750", "4 (4)/4 (4)"]
    assert today[8:10] == ["200", "701"] and today[10] == "cpu, m |"
    budget = lines[3].split(" | ")
    assert budget[1:7] == ["0", "0.1250", "0.2500", "0.0500", "0.1000", "0.1300"]


def test_run_folders_are_named_by_configuration_and_seed(tmp_path):
    assert run_dir(Path("runs/x"), "today", 1) == Path("runs/x/today_seed1")
    (tmp_path / "today_seed1").mkdir()
    (tmp_path / "today_seed1" / "results.json").write_text(json.dumps(result(1, [0.1], 10.0, 0.1)))
    assert json.loads((run_dir(tmp_path, "today", 1) / "results.json").read_text())["best_epoch"] == 1
