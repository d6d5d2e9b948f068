"""benchmarks/ablation.py's table on hand-made results.json files (no training)."""

import json
from pathlib import Path

from benchmarks.ablation import ROWS, slug, table, with_flags


def write_result(out: Path, name: str, seed: int, ndcg10: float, **extra_test: float) -> None:
    folder = out / f"{slug(name)}_seed{seed}"
    folder.mkdir(parents=True)
    test = {"HR@10": 2 * ndcg10, "NDCG@10": ndcg10, "HR@20": 3 * ndcg10, "NDCG@20": 1.5 * ndcg10, **extra_test}
    (folder / "results.json").write_text(json.dumps({
        "test": test, "epochs_run": 10 + seed, "best_epoch": 8, "train_seconds": 600.0 + 60 * seed,
        "wall_seconds": 630.0 + 60 * seed,
        "device": "cpu", "train_config": {"seed": seed},
        "history": [{"epoch": epoch, "train_seconds": 60.0 * epoch + seed} for epoch in range(1, 11 + seed)]}))


def test_table_gives_means_spread_and_changes_against_plain(tmp_path):
    write_result(tmp_path, "plain BERT4Rec", 0, 0.10)
    write_result(tmp_path, "plain BERT4Rec", 1, 0.12)
    write_result(tmp_path, "+ temporal (day of year)", 0, 0.115)
    older = tmp_path / f"{slug('+ temporal (day of year)')}_seed0" / "results.json"  # a run from before the
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "history"}))  # field
    write_result(tmp_path, "full model", 0, 0.15, rating_rmse=0.9, bias_baseline_rmse=0.95)
    write_result(tmp_path, "full model", 1, 0.14, rating_rmse=0.92, bias_baseline_rmse=0.95)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table(tmp_path, [0, 1], "m").splitlines()}
    assert rows["plain BERT4Rec"][1:8] == ["0,1", "0.2200", "0.1100", "0.3300", "0.1650", "0.0200", "-"]
    assert rows["+ temporal (day of year)"][1] == "0" and rows["+ temporal (day of year)"][7] == "+4.5% (within spread)"
    assert rows["full model"][6:9] == ["0.0100", "+31.8%", "0.9100 (0.9500)"]
    assert rows["full model"][9:13] == ["10 (8)/11 (8)", "10.5", "8.0", "11.0"]  # best epoch 8 ends at 480 s + seed
    assert rows["+ temporal (day of year)"][11:13] == ["-", "10.5"]
    assert "+ rating task" not in rows  # rows without results are left out
    assert rows["full model"][13] == "cpu, m |"  # runs without a recorded machine get the one given


def test_table_names_the_machine_each_run_recorded(tmp_path):
    write_result(tmp_path, "plain BERT4Rec", 0, 0.10)
    folder = tmp_path / f"{slug('plain BERT4Rec')}_seed0"
    result = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({**result, "device": "cuda", "machine": "NVIDIA H200, x86_64"}))
    assert table(tmp_path, [0], "this machine").splitlines()[2].endswith("| cuda, NVIDIA H200, x86_64 |")


def test_every_row_is_plain_with_some_parts_switched_back_on():
    assert ROWS["plain BERT4Rec"] == with_flags()
    plain = ROWS["plain BERT4Rec"]
    for name, flags in ROWS.items():
        if name != "plain BERT4Rec" and not name.startswith("full model"):
            assert flags[:len(plain)] == plain and len(flags) > len(plain)


def test_each_row_differs_from_plain_by_exactly_its_switches():
    """Parsed by the trainer's own parser on top of a shared config file, each row's configuration differs from
    plain BERT4Rec's in exactly the fields its name says (and the full-model rows in all of them)."""
    from trainer import parse_args

    shared = ["@configs/cpu_small.txt", "--learning_rate", "1e-3", "--lr_schedule", "constant", "--no-causal",
              "--next_item_weight", "1"]  # cloze, like the plain rows: a causal base would change the full rows
    plain = vars(parse_args([*shared, *ROWS["plain BERT4Rec"]]))
    expected = {
        "+ item side info (genres, year)": {"use_item_side_info"},
        "+ user tokens and cross-attention": {"use_user_tokens"},
        "+ temporal (day of year)": {"use_temporal"},
        "+ next-item task": {"next_item_weight", "task_weights"},
        "+ rating task": {"rating_prediction_weight", "task_weights"},
        "+ user-preference task": {"user_preference_weight", "task_weights"},
    }
    everything = {"use_item_side_info", "use_user_tokens", "use_temporal", "next_item_weight",
                  "rating_prediction_weight", "user_preference_weight", "task_weights"}
    for name, flags in ROWS.items():
        config = vars(parse_args([*shared, *flags]))
        changed = {key for key in config if config[key] != plain[key]}
        assert changed == expected.get(name, set() if name == "plain BERT4Rec" else everything), name
    assert parse_args([*shared, *ROWS["full model, next-item weight 0.1"]]).next_item_weight == 0.1
