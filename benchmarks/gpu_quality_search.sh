#!/usr/bin/env bash
# Issue 18's GPU search in one lease: five trainings side by side on one GPU, each under the same --max_minutes,
# bf16 autocast and a cosine schedule that ends on time. Writes runs/gpu_q18/ and, under $OUT, a tarball of every
# run's results.json and train.log, plus seed 0's T-200 full-model weights (optimizer state dropped, split in 15 MB
# parts: `cat best_model.pt.part* > best_model.pt`) and metadata.json, for a re-evaluation on another machine.
#
#   DATA=.devdata/ml-1m OUT=/tmp/out MINUTES=8.6 bash benchmarks/gpu_quality_search.sh
#
# Rows: the full model (next-item weight 0.1, configs/ml1m_tuned.txt) at T 200 / batch 128, seeds 0 1 2; plain
# BERT4Rec at T 200, seed 0; the full model at the tuned T 50 / batch 256, seed 0.
set -u
DATA=${DATA:-../shared/data/ml-1m}
OUT=${OUT:-runs/gpu_q18_out}
MINUTES=${MINUTES:-8.6}
RUNS=${RUNS:-runs/gpu_q18}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$RUNS"
COMMON=(--data_dir "$DATA" --max_minutes "$MINUTES")
GPU=(@configs/ml1m_tuned.txt --device "${DEVICE:-cuda}" --amp bf16 --lr_schedule cosine ${EXTRA:-})
T200=(--seq_length 200 --batch_size 128)
FULL="full model, next-item weight 0.1"

nvidia-smi > "$OUT/nvidia_idle.txt" 2>&1
"$PY" benchmarks/ablation.py "${COMMON[@]}" --seeds 0 1 2 --parallel 3 --rows "$FULL" --out $RUNS/t200 \
    -- "${GPU[@]}" "${T200[@]}" > $RUNS/t200_full.log 2>&1 &
full200=$!
"$PY" benchmarks/ablation.py "${COMMON[@]}" --seeds 0 --rows "plain BERT4Rec" --out $RUNS/t200 \
    -- "${GPU[@]}" "${T200[@]}" > $RUNS/t200_plain.log 2>&1 &
plain200=$!
"$PY" benchmarks/ablation.py "${COMMON[@]}" --seeds 0 --rows "$FULL" --out $RUNS/t50 \
    -- "${GPU[@]}" > $RUNS/t50_full.log 2>&1 &
full50=$!
(sleep 120; nvidia-smi > "$OUT/nvidia_busy.txt" 2>&1) > /dev/null 2>&1 &
# a guard: whatever is still training at the end of the lease is stopped so the results below still come back
(sleep "${GUARD_SECONDS:-575}"; pkill -f "trainer.py") > /dev/null 2>&1 &
guard=$!
wait $full200 $plain200 $full50
kill $guard 2>/dev/null
"$PY" benchmarks/ablation.py --out $RUNS/t200 --seeds 0 1 2 --table_only > $RUNS/t200_table.md 2>&1
"$PY" benchmarks/ablation.py --out $RUNS/t50 --seeds 0 --table_only > $RUNS/t50_table.md 2>&1
RUNS=$RUNS "$PY" - <<'EOF'
import os

import torch

run = os.environ["RUNS"] + "/t200/full_model__next_item_weight_0_1_seed0"
checkpoint = torch.load(f"{run}/best_model.pt", map_location="cpu", weights_only=True)
for key in ("optimizer", "scheduler", "scaler", "rng"):
    checkpoint.pop(key, None)
torch.save(checkpoint, f"{run}/best_weights.pt")
EOF
split -b 15M $RUNS/t200/full_model__next_item_weight_0_1_seed0/best_weights.pt "$OUT/best_model.pt.part"
cp $RUNS/t200/full_model__next_item_weight_0_1_seed0/metadata.json "$OUT/metadata.json"
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='*.png' --exclude=metadata.json $RUNS
ls -la "$OUT"
cat $RUNS/t200_table.md $RUNS/t50_table.md
