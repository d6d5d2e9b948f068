"""Inference speed on the real MovieLens 1M: engine load, one user's top 10, one explanation, all users
(recommend_batch in memory, and export_recommendations to CSV and JSON Lines files).

    python benchmarks/bench_inference.py                      # untrained checkpoint of the seed's configuration
    python benchmarks/bench_inference.py --model_path checkpoints/best_model.pt   # a trained one

Without --model_path the script builds the model of the seed's configuration (configs/seed.txt: hidden 256,
4 heads, 4 layers, seq_length 50; the largest model the project trains on a CPU), saves it untrained as a
checkpoint in trainer.py's format beside a fresh metadata.json (in a temporary folder), and times that: the cost
of a forward pass does not depend on the weights. Targets (CPU, 2 threads): get_recommendations p50 <= 10 ms,
all 6,040 users <= 30 s.

`--precision bf16` times the engine with its encoder in bf16 and also ranks every user in fp32 to count the users
whose top 10 is the same (list and order, and as a set): meaningful with a trained --model_path (an untrained
model's scores are too close together to rank alike).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data_processor import SequenceData, load_dataset, save_metadata  # noqa: E402
from engine import default_batch_users  # noqa: E402
from enhanced_model import EnhancedBERT4Rec  # noqa: E402
from inference import RecommendationEngine  # noqa: E402
from inference_inputs import PRECISIONS  # noqa: E402
from scoring import top_k_records  # noqa: E402
from train_config import parse_args  # noqa: E402
from trainer import TrainConfig, build_model_config, save_model_checkpoint  # noqa: E402

TARGET_P50_S = 0.010
TARGET_ALL_USERS_S = 30.0


def write_untrained_checkpoint(path: Path, data: SequenceData, config: TrainConfig, seed: int = 0) -> None:
    """A checkpoint in trainer.py's format holding a freshly initialised model of `config`."""
    torch.manual_seed(seed)
    model = EnhancedBERT4Rec(build_model_config(config, data), *data.item_tables())
    save_model_checkpoint(path, model, data.fingerprint, config, epoch=0)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    return float(np.percentile(seconds, 50)) * 1e3, float(np.percentile(seconds, 95)) * 1e3


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def recommend_batch_parts(engine: RecommendationEngine, user_ids: list[int],
                          batch_size: int | None) -> tuple[float, float, list[list[dict]]]:
    """Seconds of recommend_batch(user_ids, k=10)'s two parts, run as it runs them: scoring (the encoder and every
    movie's score, seen movies excluded) and the records (scoring.top_k_records: the top 10, the rating head's
    predictions, a dict per listed movie); and the records, recommend_batch's answer."""
    requests = engine._resolve_batch(user_ids, None, None, None)
    started = time.perf_counter()
    scores, hidden = engine._score_and_hidden(requests, True, batch_size)
    scored = time.perf_counter()
    records = top_k_records(engine.model, engine._catalog, scores, hidden, 10, requests)
    return scored - started, time.perf_counter() - scored, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"), help="real ML-1M")
    parser.add_argument("--model_path", help="a trained checkpoint (default: untrained, the seed's configuration)")
    parser.add_argument("--config", help="without --model_path: the untrained model's trainer.py @config file "
                        "(e.g. configs/best.txt; default: configs/seed.txt's defaults)")
    parser.add_argument("--metadata_path", help="its metadata.json (default: the one beside --model_path)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--calls", type=int, default=200, help="timed get_recommendations calls")
    parser.add_argument("--explain_calls", type=int, default=100, help="timed explain_recommendation calls")
    parser.add_argument("--batch_runs", type=int, default=3, help="timed runs over all users (median reported)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="users per forward pass in batch scoring (default: the engine's, 64 on a CPU and 512 on a "
                             "GPU)")
    parser.add_argument("--seed", type=int, default=0, help="which users are sampled")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the engine's precision (bf16: "
                        "also the top-10 agreement with fp32 over all users)")
    args = parser.parse_args()
    if args.metadata_path is not None and args.model_path is None:
        parser.error("--metadata_path goes with --model_path")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        if args.model_path is None:
            data = load_dataset(args.data_dir, seq_length=TrainConfig().seq_length)
            model_path, metadata_path = Path(scratch) / "untrained.pt", Path(scratch) / "metadata.json"
            config = parse_args([f"@{args.config}"]) if args.config else TrainConfig()
            write_untrained_checkpoint(model_path, data, config)
            save_metadata(data, metadata_path)
            source = f"untrained checkpoint of {args.config or 'the seed configuration'}, created by this script"
        else:
            model_path = Path(args.model_path)
            metadata_path = Path(args.metadata_path) if args.metadata_path else model_path.parent / "metadata.json"
            source = f"checkpoint {model_path}"
        engine = RecommendationEngine(model_path, metadata_path, device=args.device, precision=args.precision)
        # the passes over every user first, after a warm-up, as an export from the command line or a notebook runs
        # them: what the process did before changes how much freed memory they find to reuse
        user_ids = engine.user_ids
        engine.recommend_batch(user_ids[:1024], k=10, batch_size=args.batch_size)
        batch_seconds = [
            timed(lambda: engine.recommend_batch(user_ids, k=10, batch_size=args.batch_size))
            for _ in range(args.batch_runs)
        ]
        parts = [recommend_batch_parts(engine, user_ids, args.batch_size) for _ in range(args.batch_runs)]
        load_seconds = [
            timed(lambda: RecommendationEngine(model_path, metadata_path, device=args.device)) for _ in range(3)
        ]
        fp32_engine = (engine if args.precision == "fp32" else
                       RecommendationEngine(model_path, metadata_path, device=args.device))

    config = engine.config
    rng = np.random.default_rng(args.seed)
    sampled = rng.choice(user_ids, size=args.calls, replace=True).tolist()
    for user_id in sampled[:10]:  # warm-up
        engine.get_recommendations(user_id=user_id, k=10)
    recommend_seconds = [timed(lambda u=u: engine.get_recommendations(user_id=u, k=10)) for u in sampled]
    explained = sampled[: args.explain_calls]
    top_items = [engine.get_recommendations(user_id=u, k=1)[0]["movie_id"] for u in explained]
    explain_seconds = [
        timed(lambda u=u, m=m: engine.explain_recommendation(u, None, m))
        for u, m in zip(explained, top_items, strict=True)
    ]
    with tempfile.TemporaryDirectory() as scratch:
        export_seconds = {
            suffix: [timed(lambda suffix=suffix: engine.export_recommendations(
                Path(scratch) / f"recs{suffix}", k=10, batch_size=args.batch_size, progress=False))
                for _ in range(args.batch_runs)]
            for suffix in (".csv", ".jsonl")
        }

    p50, p95 = percentiles(recommend_seconds)
    e50, e95 = percentiles(explain_seconds)
    all_users = statistics.median(batch_seconds)
    p50_verdict = "met" if p50 / 1e3 <= TARGET_P50_S else "MISSED"
    batch_verdict = "met" if all_users <= TARGET_ALL_USERS_S else "MISSED"
    print(f"model: {source}")
    print(f"config: hidden {config.hidden_size}, {config.num_heads} heads, {config.num_layers} layers, "
          f"seq_length {config.seq_length}; device {engine.device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"engine load (checkpoint + metadata.json), median of 3: {statistics.median(load_seconds):.2f} s")
    print(f"get_recommendations(user_id, k=10), {len(recommend_seconds)} calls: p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms (target p50 <= {TARGET_P50_S * 1e3:.0f} ms: {p50_verdict})")
    print(f"explain_recommendation(user_id, its top item), {len(explain_seconds)} calls: "
          f"p50 {e50:.1f} ms, p95 {e95:.1f} ms")
    batch = args.batch_size or default_batch_users(engine.device)
    print(f"recommend_batch(all {len(user_ids)} users, k=10, batch {batch}), median of "
          f"{len(batch_seconds)}: {all_users:.1f} s (runs {', '.join(f'{s:.1f}' for s in batch_seconds)}; "
          f"target <= {TARGET_ALL_USERS_S:.0f} s: {batch_verdict})")
    print(f"  its two parts, each the median of {len(parts)} more runs: scoring "
          f"{statistics.median(p[0] for p in parts):.2f} s, the records (top 10, predicted ratings, a dict per "
          f"movie) {statistics.median(p[1] for p in parts):.2f} s")
    for suffix, seconds in export_seconds.items():
        median = statistics.median(seconds)
        print(f"export_recommendations(all {len(user_ids)} users, k=10) to {suffix}, median of {len(seconds)}: "
              f"{median:.1f} s (runs {', '.join(f'{s:.1f}' for s in seconds)}; target <= "
              f"{TARGET_ALL_USERS_S:.0f} s: {'met' if median <= TARGET_ALL_USERS_S else 'MISSED'})")
    if args.precision != "fp32":
        ours, theirs = (e.score_batch(user_ids, batch_size=args.batch_size).scores for e in (engine, fp32_engine))
        same_list, same_set = top10_agreement(ours, theirs)
        print(f"top 10 in {args.precision} against fp32, all {len(user_ids)} users: the same list for "
              f"{same_list:.2%}, the same set for {same_set:.2%}")
        ties = near_ties(ours, theirs)
        print(f"largest |score difference| of a user against fp32: median {ties['difference_median']:.4f}, 99th "
              f"percentile {ties['difference_p99']:.4f}, largest {ties['difference_max']:.4f}; users within twice "
              f"the largest of a tie (re-scoring them in fp32 would give fp32's top 10 to everyone): "
              f"{ties['set_share']:.1%} at the 10th place (the set), {ties['order_share']:.1%} anywhere in the top 10 "
              f"(the order)")
    return 0


def top10_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """The share of users (rows of two engines' score_batch scores) whose top 10 in ours is theirs, in the same order
    (as recommend_batch lists them), and as a set."""
    ours_top, theirs_top = ours.topk(10, dim=1).indices, theirs.topk(10, dim=1).indices
    same_list = (ours_top == theirs_top).all(dim=1)
    same_set = (ours_top.sort(dim=1).values == theirs_top.sort(dim=1).values).all(dim=1)
    return float(same_list.double().mean()), float(same_set.double().mean())


def near_ties(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """How far an engine's scores `ours` are from a reference's `theirs` (score_batch scores of the same users),
    and which users could rank differently because of it.

    difference_*: the median, 99th percentile and largest over users of a user's largest |score difference|
    (movies scored in both). With e the largest of all, a user's top 10 can differ from reference's as a set only
    where ours' 10th and 11th scores are within 2e, and in order only where two neighbours among its first 11
    are: set_share and order_share are those users' shares, the ones a re-check that is sure to agree with the
    reference would have to score again."""
    difference = (ours - theirs).where(torch.isfinite(theirs), 0.0).abs().amax(dim=1).double()
    margin = 2 * float(difference.max())
    top = ours.topk(11, dim=1).values
    gaps = top[:, :-1] - top[:, 1:]
    return {"difference_median": float(difference.median()), "difference_p99": float(difference.quantile(0.99)),
            "difference_max": margin / 2, "set_share": float((gaps[:, 9] <= margin).double().mean()),
            "order_share": float((gaps <= margin).any(dim=1).double().mean())}


if __name__ == "__main__":
    sys.exit(main())
