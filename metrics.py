"""The ranking metrics of docs/EVALUATION.md: full ranking, ties counted against the target.

One definition of a rank for the whole project: training's evaluation, the benchmarks and the engine's "ranked 5th
for you" all read target_ranks, so a number in an explanation and a number in results.json mean the same thing.
"""

from __future__ import annotations

import torch

RANKING_KS = (1, 5, 10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target: the number of other items scoring >= the target.

    Ties count against the target, so a constant scorer ranks every target last, not first.
    """
    target_scores = scores.gather(1, targets[:, None])
    return (scores >= target_scores).sum(dim=1) - 1


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = RANKING_KS) -> dict[str, float]:
    """HR@K and NDCG@K (one relevant item per user) from 0-based ranks."""
    ranks = ranks.double()
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"HR@{k}"] = hit.double().mean().item()
        metrics[f"NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean().item()
    return metrics
