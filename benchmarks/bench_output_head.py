"""What a Mixture-of-Logits output head would cost on this machine, beside the project's dot-product head.

HSTU's published ML-1M figure, the one to beat, comes with a Mixture-of-Logits head (MoL: Zhai et al., "Revisiting
Neural Retrieval on Accelerators", KDD 2023). MoL scores a (query, item) pair by k dot products of projections,
mixed by a softmax gate that depends on the pair, so it cannot be folded into one matrix product: every
intermediate is k x rows x items. This times forward + backward of the full-softmax item loss for one training
batch's rows, with the dot product (the project's ItemHead) and with a MoL sketch of k components (query and item
projections of hidden_size / k each, gate = query term + item term + a k x k mix of the component logits), in
bf16 autocast as the best model (configs/best.txt) trains. Heads are timed in turn inside every repeat; the figure is
the median. The sketch is not part of the model: it is here to say whether MoL is affordable on a CPU.

    python benchmarks/bench_output_head.py                     # rows of one batch of configs/best.txt, 2 threads
    python benchmarks/bench_output_head.py --components 2 4 --rows 4096 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MixtureOfLogitsSketch(nn.Module):
    """logit(q, x) = sum_c softmax_c(a(q) + b(x) + W l(q, x))_c * l_c(q, x), l_c = <P_c q, R_c x>."""

    def __init__(self, hidden_size: int, components: int) -> None:
        super().__init__()
        self.components = components
        self.query_proj = nn.Linear(hidden_size, hidden_size)
        self.item_proj = nn.Linear(hidden_size, hidden_size)
        self.query_gate = nn.Linear(hidden_size, components)
        self.item_gate = nn.Linear(hidden_size, components)
        self.pair_gate = nn.Linear(components, components, bias=False)

    def forward(self, query: Tensor, item_table: Tensor) -> Tensor:
        k, rows, items = self.components, query.size(0), item_table.size(0)
        q = self.query_proj(query).view(rows, k, -1).transpose(0, 1)  # (k, rows, d)
        x = self.item_proj(item_table).view(items, k, -1).permute(1, 2, 0)  # (k, d, items)
        logits = torch.bmm(q, x)  # (k, rows, items)
        gate = self.query_gate(query).T[:, :, None] + self.item_gate(item_table).T[:, None, :]
        gate = gate + torch.einsum("cri,dc->dri", logits, self.pair_gate.weight)
        return (gate.float().softmax(dim=0) * logits).sum(dim=0)


def time_head(score: Callable[[], Tensor], targets: Tensor) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = score()
    F.cross_entropy(logits.float(), targets).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="scored positions per batch (configs/best.txt: "
                        "128 windows of T 50, at most 128 x 49 = 6,272, fewer for short and cropped windows)")
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--components", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    query = torch.randn(args.rows, args.hidden_size, requires_grad=True)
    item_table = (0.02 * torch.randn(args.items, args.hidden_size)).requires_grad_()
    targets = torch.randint(0, args.items, (args.rows,))
    heads: dict[str, Callable[[], Tensor]] = {"dot product": lambda: F.linear(query, item_table)}
    for k in args.components:
        heads[f"MoL, k={k}"] = partial(MixtureOfLogitsSketch(args.hidden_size, k), query, item_table)
    times: dict[str, list[float]] = {name: [] for name in heads}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, score in heads.items():
            times[name].append(time_head(score, targets))
    print(f"{args.rows} rows x {args.items} items, hidden {args.hidden_size}, {args.threads} threads, bf16 autocast,"
          f" median of {args.repeats}")
    base = statistics.median(times["dot product"][1:])
    for name, values in times.items():
        median = statistics.median(values[1:])
        print(f"  {name:12s} {median * 1000:8.1f} ms forward+backward  ({median / base:.1f}x the dot product)")


if __name__ == "__main__":
    main()
