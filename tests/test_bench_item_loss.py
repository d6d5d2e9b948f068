"""benchmarks/bench_item_loss.py times the trainer's own item loss, full and sampled."""

import torch

from benchmarks.bench_item_loss import measure


def test_measure_times_both_losses_on_a_small_catalogue():
    threads = torch.get_num_threads()
    try:  # measure sets the thread count of the process it runs in (a fresh one in the benchmark)
        full, sampled = (measure(300, negatives, 64, 1, 1) for negatives in (0, 32))
        loop = measure(300, 32, 64, 1, 1, fused=False)  # torch's default AdamW on a CPU, for comparison
    finally:
        torch.set_num_threads(threads)
    for measured in (full, sampled, loop):
        assert measured["loss_s"] > 0 and measured["adam_s"] > 0 and measured["peak_rss_mb"] > 0
