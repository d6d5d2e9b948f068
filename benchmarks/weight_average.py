r"""A run's raw weights against its moving average (--ema_decay), on the same steps: validation and test figures.

Reads a last.pt written with --ema_decay, which holds both (the raw weights as the model, the average beside them),
and evaluates each on the validation and test users by the EVALUATION.md protocol, in fp32 as the trainer does. The
two share every training step, so their difference is the average's alone, free of the machine's speed and of the
seed. last.pt is the run's last epoch: where that epoch is also the best on validation, its average is
best_model.pt and its test row is results.json's. Results: docs/RESULTS.md#a-moving-average-of-the-weights.

    python benchmarks/weight_average.py --data_dir path/to/ml-1m runs/ttq15_ema/small_ema998_seed0/last.pt
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from data_processor import eval_inputs  # noqa: E402
from enhanced_model import model_from_checkpoint  # noqa: E402
from trainer import data_to_tensors, evaluate, load_checkpoint, load_run_data, to_eval_tensors  # noqa: E402


def compare(checkpoint_path: str | Path, data_dir: str | Path | None = None,
            checkpoint: dict | None = None) -> dict[str, dict[str, dict]]:
    """{"raw" | "average": {"val" | "test": the trainer's metrics}} for the checkpoint's two sets of weights
    (`checkpoint`: the file's contents when already read)."""
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(checkpoint_path)
    average = checkpoint.get("weight_average", {}).get("average")
    if not average:
        raise SystemExit(f"{checkpoint_path} holds no moving average: pass the last.pt of a run trained with "
                         "--ema_decay")
    config = checkpoint["train_config"]
    data = load_run_data(config, data_dir)
    if data.fingerprint != checkpoint["data_fingerprint"]:
        raise SystemExit(f"{checkpoint_path} was trained on other data than {data_dir}: pass its --data_dir")
    device = torch.device("cpu")
    tensors = data_to_tensors(data, device)
    splits = {split: to_eval_tensors(eval_inputs(data, split, config["seq_length"]), device)
              for split in ("val", "test")}
    model = model_from_checkpoint(checkpoint, checkpoint_path)
    figures = {}
    for weights in ("raw", "average"):
        if weights == "average":
            loaded = model.load_state_dict(average, strict=False)  # the parameters; buffers are not averaged
            if loaded.unexpected_keys or len(loaded.missing_keys) + len(average) != len(model.state_dict()):
                raise SystemExit(f"{checkpoint_path}: its average does not fit its model")
        figures[weights] = {split: evaluate(model, inputs, tensors, config["eval_batch_size"])
                            for split, inputs in splits.items()}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="last.pt files of runs trained with --ema_decay")
    parser.add_argument("--data_dir", help="the data they were trained on (default: the path each recorded)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| run | epoch (step) | weights | validation NDCG@10 / HR@10 | test NDCG@10 / HR@10 |")
    print("|---|---|---|---|---|")
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        for weights, splits in compare(path, args.data_dir, checkpoint).items():
            val, test = splits["val"], splits["test"]
            print(f"| {path} | {checkpoint['epoch']} ({checkpoint['step']}) | {weights} | {val['NDCG@10']:.4f} / "
                  f"{val['HR@10']:.4f} | {test['NDCG@10']:.4f} / {test['HR@10']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
