"""Training throughput on the real ML-1M: sequences/s, seconds per epoch and peak memory.

Each configuration runs in a fresh process (so its peak RSS is its own): load the data, build the model and the
multi-task objective exactly as trainer.py does, run warm-up steps, then time single optimizer steps (batch
building, forward, backward, AdamW) and one full-ranking validation pass. Seconds per epoch = steps per epoch x
the median step time + the validation pass (measured, not a whole epoch: the default configuration's epoch takes
many minutes on a CPU).

    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --steps 15
    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --configs tuned tuned_bf16   # bf16 autocast
    python benchmarks/bench_train.py --data_dir ../shared/data/ml-1m --configs budget budget_compile  # compile
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RSS_TARGET_MB = 3072  # the target for the default configuration

CONFIGS = {  # --configs key: (table name, trainer.py flags)
    "default": ("default (seed: hidden 256, 4 heads, 4 layers, T 50, batch 64)", []),
    "small": ("small CPU (hidden 64, 2 heads, 2 layers, T 50, batch 128)",
              ["--hidden_size", "64", "--num_heads", "2", "--num_layers", "2", "--batch_size", "128"]),
    "tuned": ("tuned (configs/ml1m_tuned.txt: the seed's size, batch 256)", ["@configs/ml1m_tuned.txt"]),
    "tuned_bf16": ("tuned, --amp bf16", ["@configs/ml1m_tuned.txt", "--amp", "bf16"]),
    "budget": ("CPU default (configs/cpu_budget.txt: hidden 64, 2 layers, batch 128)", ["@configs/cpu_budget.txt"]),
    "budget_compile": ("CPU default, --compile (inductor)", ["@configs/cpu_budget.txt", "--compile"]),
    "budget_causal": ("CPU default, --causal (every position predicts its successor)",
                      ["@configs/cpu_budget.txt", "--causal"]),
}

CHILD = """
import json, math, resource, statistics, sys, time
import torch
sys.path.insert(0, {repo!r})
from data_processor import eval_inputs, load_dataset, mask_index
from enhanced_model import EnhancedBERT4Rec
from trainer import (MultiTaskObjective, autocast_context, build_model_config, data_to_tensors, evaluate,
                     make_batch, make_optimizer, parse_args, to_eval_tensors)

torch.set_num_threads({threads})
config = parse_args({args!r})
data = load_dataset(config.data_dir, cache_dir=config.cache_dir, seq_length=config.seq_length)
model = EnhancedBERT4Rec(build_model_config(config, data), data.item_genres, data.item_years)
if config.compile:
    model.encoder.compile()
objective = MultiTaskObjective(model, config.task_weights).train()
optimizer = make_optimizer(model, config)
tensors = data_to_tensors(data, torch.device("cpu"))
generator = torch.Generator().manual_seed(0)
mask_token = mask_index(data.num_items)
num_windows = len(data.window_users)

def step():
    rows = torch.randint(0, num_windows, (config.batch_size,), generator=generator)
    batch = make_batch(tensors, rows, mask_token, config.mask_prob, config.user_dropout,
                       config.demographics_dropout, generator, mask_last=config.next_item_on,
                       crop_prob=config.next_item_crop, new_user_prob=config.new_user_prob, causal=config.causal)
    with autocast_context(config.amp, "cpu"):
        losses = objective(batch)
    losses["total"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

for _ in range({warmup}):
    step()
times = []
for _ in range({steps}):
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
started = time.perf_counter()
evaluate(model, to_eval_tensors(eval_inputs(data, "val", config.seq_length), torch.device("cpu")), tensors,
         config.eval_batch_size)
eval_s = time.perf_counter() - started
print(json.dumps({{"step_s": statistics.median(times), "step_min_s": min(times), "step_max_s": max(times),
                  "batch_size": config.batch_size, "steps_per_epoch": math.ceil(num_windows / config.batch_size),
                  "windows": num_windows, "eval_s": eval_s,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(flags: list[str], data_dir: str, steps: int, warmup: int, threads: int) -> dict:
    args = ["--data_dir", data_dir, "--cache_dir", str(REPO / "runs" / "cache"), *flags]
    code = CHILD.format(repo=str(REPO), args=args, steps=steps, warmup=warmup, threads=threads)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--steps", type=int, default=15, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["default", "small"],
                        help="configurations to measure, in this order")
    args = parser.parse_args()

    print(f"torch threads {args.threads}; median of {args.steps} timed steps after {args.warmup} warm-up steps\n")
    print("| configuration | parameters | step (s), median [min-max] | sequences/s | validation pass (s) "
          "| s/epoch | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    default_note = ""
    for key in args.configs:
        name, flags = CONFIGS[key]
        m = measure(flags, args.data_dir, args.steps, args.warmup, args.threads)
        epoch_s = m["steps_per_epoch"] * m["step_s"] + m["eval_s"]
        print(f"| {name} | {m['parameters'] / 1e6:.2f} M | {m['step_s']:.3f} [{m['step_min_s']:.3f}-"
              f"{m['step_max_s']:.3f}] | {m['batch_size'] / m['step_s']:.0f} | {m['eval_s']:.1f} "
              f"| {epoch_s:.0f} ({m['steps_per_epoch']} steps of {m['windows']} windows) | {m['peak_rss_mb']:.0f} |",
              flush=True)
        if key == "default":
            verdict = "met" if m["peak_rss_mb"] <= RSS_TARGET_MB else "MISSED"
            default_note = f"\ndefault-config peak RSS target <= {RSS_TARGET_MB} MB: {verdict}"
    print(default_note)


if __name__ == "__main__":
    main()
