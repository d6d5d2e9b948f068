"""benchmarks/bench_train.py, bench_dropout.py and bench_allocator.py: their configurations are the checked-in files,
and they time the trainer's own step."""

import pytest
import torch
from conftest import TINY

import enhanced_model
from benchmarks.bench_allocator import VARIANTS, one_measurement
from benchmarks.bench_dropout import paired_steps
from benchmarks.bench_train import BENCH_CONFIGS, measure, table_row
from benchmarks.fresh_process import in_fresh_process
from data_processor import load_dataset
from train_config import CONFIGS, parse_args, validate_config


@pytest.mark.parametrize("key", sorted(BENCH_CONFIGS))
def test_every_configuration_parses_and_validates_on_the_cpu(key):
    validate_config(parse_args([*BENCH_CONFIGS[key][1], "--device", "cpu"]))


def test_the_configurations_are_the_config_files_plus_their_named_change():
    def config(key: str) -> dict:
        return vars(parse_args(BENCH_CONFIGS[key][1]))

    best, cpu_small = config("best"), config("cpu_small")
    assert best == vars(parse_args([f"@{CONFIGS / 'best.txt'}"])) and best["amp"] == "bf16"
    assert cpu_small == vars(parse_args([f"@{CONFIGS / 'cpu_small.txt'}"])) and cpu_small["causal"]
    assert config("seed") == vars(parse_args([]))  # the seed's file is the flags' defaults
    assert config("cpu_sampled") == {**cpu_small, "item_loss": "sampled", "num_negatives": 1024}
    assert config("best_muon") == {**best, "optimizer": "muon", "max_epochs": 8, "patience": 8}
    changes = {"best_fp32": ("amp", "off"), "best_compile": ("compile", True), "best_unpadded": ("loss_row_bucket", 0),
               "cpu_small_bf16": ("amp", "bf16"), "cpu_small_compile": ("compile", True)}
    for key, (name, value) in changes.items():
        base = best if key.startswith("best") else cpu_small
        assert config(key) == {**base, name: value}, key
    small = config("bf16_small")
    assert small == vars(parse_args([f"@{CONFIGS / 'bf16_small.txt'}"])) and small["amp"] == "bf16"
    assert config("bf16_small_fp32") == {**small, "amp": "off"}
    assert config("bf16_small_muon") == {**small, "optimizer": "muon", "learning_rate": 1.5e-3}


def test_the_dropout_benchmark_times_both_variants_and_puts_the_models_dropout_back(synthetic_ml1m_dir, tmp_path):
    threads, ours = torch.get_num_threads(), enhanced_model.dropout
    try:
        medians = paired_steps([*TINY, "--cache_dir", str(tmp_path / "cache"), "--dropout", "0.2"],
                               str(synthetic_ml1m_dir), 3, 1, 1)
    finally:
        torch.set_num_threads(threads)
    assert set(medians) == {"enhanced_model.dropout", "F.dropout"} and min(medians.values()) > 0
    assert enhanced_model.dropout is ours


def test_measure_runs_the_trainers_step_on_synthetic_data(synthetic_ml1m_dir, tmp_path):
    threads = torch.get_num_threads()
    try:  # measure sets the thread count of the process it runs in (a fresh one in the benchmark)
        measured = measure([*TINY, "--cache_dir", str(tmp_path / "cache")],
                           str(synthetic_ml1m_dir), 2, 1, 1)
    finally:
        torch.set_num_threads(threads)
    windows = len(load_dataset(synthetic_ml1m_dir, seq_length=12).window_users)
    assert (measured["batch_size"], measured["windows"], measured["steps_per_epoch"]) == (16, windows,
                                                                                           -(-windows // 16))
    assert measured["step_min_s"] <= measured["step_s"] <= measured["step_max_s"] and measured["step_flops"] > 0
    assert measured["page_faults_per_step"] >= 0
    row = table_row("tiny", measured, {"fp32": 100.0})
    assert row.startswith("| tiny | ") and row.count("|") == 11  # nine columns and one share


def test_the_allocator_benchmark_measures_each_variant_in_a_process_of_its_own(synthetic_ml1m_dir, tmp_path):
    flags = [*TINY, "--cache_dir", str(tmp_path / "cache")]
    for variant in VARIANTS:
        measured = in_fresh_process(one_measurement, variant, flags, str(synthetic_ml1m_dir), 2, 1, 1)
        assert measured["step_s"] > 0 and measured["page_faults_per_step"] >= 0 and measured["eval_s"] == 0.0
