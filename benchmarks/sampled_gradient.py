"""How closely the sampled item loss's gradient follows the full softmax's, on real training batches of ML-1M.

The sampled loss (--item_loss sampled) learns less per epoch than the full softmax (docs/RESULTS.md, At scale);
this measures where its gradient departs from the full one. A configuration's run is set up as trainer.py sets it
up (benchmarks/bench_train.training_run: data, network, objective, batches of its shuffle), optionally with a
trained checkpoint's weights, and for each batch the loss rows (the hidden rows the item losses read, with their
targets, as MultiTaskObjective finds them) are scored both ways by the objective's own item_nll: over every item,
and over the target and the step's shared negatives (draw_negatives, sampled_softmax_nll), several draws each.
In fp32, without dropout (eval mode), so that the two differ by the sampling alone. Reported per negative count:

- rows: the cosine between the two gradients of each loss row (what the encoder receives), the median row;
- table: the item table's gradient (item_embedding.weight: the output rows and, through the lookup, nothing else
  here, as the rows are held fixed), its error relative to the full one's (||sampled - full|| / ||full||) for one
  draw and for the mean of `--draws` draws (the error of a single draw's noise shrinks as 1 / sqrt(draws)), and the
  share of the catalogue's rows one draw gives any gradient at all;
- loss: the sampled loss's mean minus the full one's (the logQ estimator's bias in value; a constant offset does
  not change the gradient).

    python benchmarks/sampled_gradient.py --data_dir path/to/ml-1m --model_path runs/X/best_model.pt \\
        --flags "@configs/bf16_small.txt" --negatives 256 1024 2048
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_train import training_run  # noqa: E402
from trainer import configured_batch, mask_index, masked_mean  # noqa: E402


def loss_rows(run, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hidden rows the item losses read for a batch of these training windows (made as the trainer makes it,
    the rows chosen by MultiTaskObjective.loss_positions), detached, with their targets and which rows are real."""
    batch = configured_batch(run.config, run.data_tensors, windows, mask_index(run.data.num_items), run.generators[1])
    index, real, _ = run.objective.loss_positions(batch)
    with torch.no_grad():
        hidden = run.objective.model(batch["masked_seq"], batch["days"], **batch["user"]).hidden
    return hidden.flatten(0, 1)[index], batch["targets"].flatten()[index], real


def gradients(run, rows: torch.Tensor, targets: torch.Tensor, real: torch.Tensor,
              num_negatives: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The mean item loss's gradient on each row and on the item table, and the loss, with num_negatives (0: the
    full softmax) drawn from the run's own generator."""
    objective, table = run.objective, run.objective.model.item_embedding.weight
    objective.num_negatives = num_negatives
    rows = rows.detach().requires_grad_()
    loss = masked_mean(objective.item_nll(rows, targets, real), real)
    row_grad, table_grad = torch.autograd.grad(loss, [rows, table])
    return row_grad[real], table_grad, loss.item()


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return ((estimate - exact).norm() / exact.norm()).item()


def measure(run, batches, negatives: list[int], num_batches: int, draws: int) -> dict[int, dict[str, float]]:
    """For each count of negatives, the means over num_batches batches of: the median row's gradient cosine with the
    full softmax's (one draw), the item table's gradient error for one draw and for the mean of `draws`, the share
    of the catalogue's rows one draw reaches, and the sampled loss minus the full one (mean over the draws)."""
    results: dict[int, dict[str, list[float]]] = {n: {} for n in negatives}
    for _ in range(num_batches):
        rows, targets, real = loss_rows(run, next(batches))
        full_rows, full_table, full_loss = gradients(run, rows, targets, real, 0)
        for n in negatives:
            drawn = [gradients(run, rows, targets, real, n) for _ in range(draws)]
            record = results[n]
            cosines = torch.nn.functional.cosine_similarity(drawn[0][0], full_rows, dim=1)
            record.setdefault("row_cosine", []).append(cosines.median().item())
            record.setdefault("table_error", []).append(relative_error(drawn[0][1], full_table))
            mean_table = torch.stack([table for _, table, _ in drawn]).mean(0)
            record.setdefault("table_error_mean", []).append(relative_error(mean_table, full_table))
            touched = (drawn[0][1] != 0).any(1)[1:-1].float().mean()  # the real items' rows (not pad, MASK)
            record.setdefault("rows_touched", []).append(touched.item())
            record.setdefault("loss_bias", []).append(statistics.fmean(loss for *_, loss in drawn) - full_loss)
    return {n: {key: statistics.fmean(values) for key, values in record.items()} for n, record in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model_path", help="a checkpoint of the same configuration (default: its fresh weights)")
    parser.add_argument("--flags", default=f"@{REPO / 'configs' / 'bf16_small.txt'}", help="trainer.py flags")
    parser.add_argument("--negatives", type=int, nargs="+", default=[1024])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args()
    if any(n <= 0 for n in args.negatives) or args.batches <= 0 or args.draws <= 0:
        parser.error("--negatives, --batches and --draws take positive integers")

    run, batches = training_run([*shlex.split(args.flags), "--amp", "off"], args.data_dir, args.threads,
                                args.cache_dir)
    if args.model_path:
        checkpoint = torch.load(args.model_path, map_location="cpu", weights_only=True)
        try:
            run.objective.model.load_state_dict(checkpoint["model_state"])
        except (KeyError, RuntimeError) as error:
            parser.error(f"--model_path {args.model_path} is not a trainer.py checkpoint of --flags {args.flags!r} "
                         f"({str(error).splitlines()[0]}): pass the flags it was trained with")
    run.objective.eval()
    results = measure(run, batches, args.negatives, args.batches, args.draws)
    num_items = run.objective.model.config.num_items
    print(f"{args.flags}, {args.model_path or 'fresh weights'}: {num_items} items, {args.batches} batches, "
          f"{args.draws} draws each")
    print(f"| negatives | row gradient cosine (median row) | table gradient error, one draw / mean of {args.draws} "
          "| catalogue rows with a gradient | loss: sampled - full |")
    print("|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n:,} | {r['row_cosine']:.3f} | {r['table_error']:.2f} / {r['table_error_mean']:.2f} "
              f"| {r['rows_touched']:.0%} | {r['loss_bias']:+.3f} |")


if __name__ == "__main__":
    main()
