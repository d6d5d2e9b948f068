"""Pictures of training runs and explanations, written as PNG files.

matplotlib is optional (the core install stays light): without it every function prints one line saying so and
returns None. Install it with `pip install matplotlib` (requirements-extra.txt).

    plot_training_curves(history, path)      validation NDCG@10 and each task's loss per epoch and per minute
    plot_time_to_quality(runs, path)         validation NDCG@10 against training minutes, several configurations
    plot_influence(explanation, path)        each history movie's measured influence on one recommendation
    plot_scale(records, path)                each stage's cost against the events and the catalogue (log-log)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from data_processor import atomic_file
from train_config import TASKS

TASK_LOSSES = ("total", *TASKS)
MATPLOTLIB_MISSING = "note: matplotlib is not installed, so no picture was drawn ({}); pip install matplotlib"


def _pyplot(path: str | Path) -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None after a one-line note naming the skipped file."""
    try:
        import matplotlib
    except ImportError:
        print(MATPLOTLIB_MISSING.format(path), file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _save(figure: Any, pyplot: Any, path: str | Path) -> Path:
    """Write the PNG through a temporary name, so a reader never sees half a file."""
    path = Path(path)
    figure.tight_layout()
    with atomic_file(path) as handle:
        figure.savefig(handle, dpi=110, format="png")
    pyplot.close(figure)
    return path


def plot_training_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Four panels from a results.json history: validation NDCG@10 and the task losses, each against the epoch
    and against cumulative training minutes. Returns the PNG's path (None without matplotlib)."""
    pyplot = _pyplot(path)
    if pyplot is None:
        return None
    figure, axes = pyplot.subplots(2, 2, figsize=(11, 7), sharey="row")
    evaluated = [record for record in history if "val_NDCG@10" in record]
    for column, (key, label) in enumerate((("epoch", "epoch"), ("train_seconds", "training minutes"))):
        scale = 60.0 if key == "train_seconds" else 1.0
        axes[0, column].plot([r[key] / scale for r in evaluated], [r["val_NDCG@10"] for r in evaluated],
                             marker="o", markersize=3)
        axes[0, column].set_ylabel("validation NDCG@10")
        for task in TASK_LOSSES:
            points = [(r[key] / scale, r[task]) for r in history if task in r]
            if points:
                axes[1, column].plot(*zip(*points, strict=True), label=task)
        axes[1, column].set_ylabel("training loss (log scale)")
        axes[1, column].set_yscale("log")  # the tasks' losses differ by two orders of magnitude
        axes[1, column].set_xlabel(label)
        for axis in axes[:, column]:
            axis.grid(alpha=0.3)
    axes[1, 0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, pyplot, path)


def plot_time_to_quality(runs: dict[str, list[list[dict[str, Any]]]], path: str | Path, title: str = "") -> Path | None:
    """Validation NDCG@10 against training minutes (left) and epochs (right); runs maps a configuration name to
    the histories of its seeds (one line each, one colour per configuration)."""
    pyplot = _pyplot(path)
    if pyplot is None:
        return None
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for colour, (name, histories) in enumerate(runs.items()):
        for seed_number, history in enumerate(histories):
            evaluated = [record for record in history if "val_NDCG@10" in record]
            label = name if seed_number == 0 else None
            for axis, key, scale in ((axes[0], "train_seconds", 60.0), (axes[1], "epoch", 1.0)):
                axis.plot([r[key] / scale for r in evaluated], [r["val_NDCG@10"] for r in evaluated],
                          color=f"C{colour}", marker="o", markersize=3, alpha=0.85, label=label)
    axes[0].set_xlabel("training minutes")
    axes[1].set_xlabel("epoch")
    axes[0].set_ylabel("validation NDCG@10")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, pyplot, path)


def plot_influence(explanation: dict[str, Any], path: str | Path) -> Path | None:
    """Horizontal bars: how much the recommended movie's score drops when each history movie is removed (the
    explanation's measured drivers, newest position labelled 1). Attention is not drawn: it is not influence."""
    pyplot = _pyplot(path)
    if pyplot is None:
        return None
    drivers = explanation["drivers"]
    labels = [f"{d['title']} (pos {d['position']})" for d in drivers]
    drops = [d["score_drop"] for d in drivers]
    figure, axis = pyplot.subplots(figsize=(9, 0.28 * len(drivers) + 1.6))
    axis.barh(range(len(drops)), drops, color=["C3" if drop > 0 else "C0" for drop in drops])
    axis.set_yticks(range(len(drops)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_xlabel("score drop when the movie is removed from the history (> 0: it pushed the recommendation up)")
    recommended = explanation["recommended"]
    axis.set_title(f"why {recommended['title']} (rank {recommended['rank']})", fontsize=10)
    return _save(figure, pyplot, path)


def plot_scale(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Log-log: each data stage's seconds against the events (left) and the training step's seconds against the
    catalogue, per model (right); records as benchmarks/scale.py writes them."""
    pyplot = _pyplot(path)
    if pyplot is None:
        return None
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.5))
    stages = dict.fromkeys(r["stage"] for r in records if r["stage"] != "train")
    for colour, stage in enumerate(stages):
        points = sorted((r["events"], r["seconds"]) for r in records if r["stage"] == stage)
        axes[0].plot(*zip(*points, strict=True), marker="o", color=f"C{colour}", label=stage)
    models = dict.fromkeys(r["model"] for r in records if r["stage"] == "train")
    for colour, model in enumerate(models):
        points = sorted({r["items"]: r["seconds"] for r in records
                         if r["stage"] == "train" and r["model"] == model}.items())
        loss = "full softmax" if model.endswith("_full") else "sampled loss"
        axes[1].plot(*zip(*points, strict=True), marker="o", color=f"C{colour}",
                     label=f"{model.removesuffix('_full')} model, {loss}")
    for axis, label in ((axes[0], "events"), (axes[1], "items in the catalogue")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3, which="both")
        if axis.lines:
            axis.legend(fontsize=8)
    axes[0].set_ylabel("seconds per stage")
    axes[1].set_ylabel("seconds per training step")
    return _save(figure, pyplot, path)
