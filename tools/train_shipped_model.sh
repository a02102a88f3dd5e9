#!/usr/bin/env bash
# Train the shipped default model and its leave-one-out evaluation folds with spineseg's own
# commands. Resumable: re-running continues every run from its last.pt.
#   tools/train_shipped_model.sh ../shared/data work/   [EPOCHS] [FINETUNE_EPOCHS] [STAGE3_EPOCHS]
# Stage 1 trains from scratch with slice sampling; stage 2 fine-tunes the final model from stage
# 1's last.pt with case-balanced sampling (every case equally likely: the 20-slice chest case
# was 1.8% of slice-sampled patches) at half the learning rate. Stage 3 continues from stage 2
# on a dataset with 10 noisy/osteoporotic copies per real case (real patients 46% of patches
# instead of 28%) at lr 3e-4, with CONTEXT_SLICES=1 (default) the 2.5-D network, 0 = 2-D.
set -euo pipefail
SHARED=${1:?path to shared/data}; WORK=${2:?work folder}; EPOCHS=${3:-40}; FT_EPOCHS=${4:-17}
S3_EPOCHS=${5:-24}; CONTEXT_SLICES=${CONTEXT_SLICES:-1}
SPINESEG=${SPINESEG:-.venv/bin/spineseg}
mkdir -p "$WORK"
# 1. 40 phantoms (seeds 200-239) and the three real cases as image/mask pairs.
[ -d "$WORK/phantoms/params" ] || $SPINESEG phantom -o "$WORK/phantoms" --cases 40 --seed 200 --size 256 256 96
${PYTHON:-.venv/bin/python} tools/real_cases_as_pairs.py "$SHARED" "$WORK/real"
# 2. Datasets: "final" trains on all three real cases; each loo_<case> holds that case out as test.
#    Validation = one phantom (never a real case; kept small: it runs every epoch); 4 noisy/osteoporotic copies per real train case.
VAL=phantom_000201
for spec in final:0 loo_ts_abdomen:ts_abdomen loo_ts_chest:ts_chest loo_verse012:verse012; do
  name=${spec%%:*}; test=${spec#*:}
  $SPINESEG prepare "$WORK/real" -o "$WORK/ds_$name" --add-phantom "$WORK/phantoms" \
    --val $VAL --test "$test" --noise-copies 4 --seed 0
done
# 3. Train (one thread each so four runs share two cores without oversubscription).
for name in final loo_ts_abdomen loo_ts_chest loo_verse012; do
  run="$WORK/run_$name"
  if [ -f "$run/last.pt" ]; then
    OMP_NUM_THREADS=1 $SPINESEG train --resume "$run" --epochs "$EPOCHS" > "$WORK/$name.log" 2>&1 &
  else
    OMP_NUM_THREADS=1 $SPINESEG train --data "$WORK/ds_$name" --model msrunet --width 16 --depth 4 \
      --loss dicebce --patch 192 --batch-size 8 --epochs "$EPOCHS" --max-steps-per-epoch 150 \
      --foreground-fraction 0.7 --patience 0 --lr 1e-3 --seed 0 --workers 1 --device cpu \
      -o "$run" > "$WORK/$name.log" 2>&1 &
  fi
done
wait
# 4. Stage 2 (final model only): fine-tune with case-balanced sampling.
run="$WORK/run_ft"
if [ -f "$run/last.pt" ]; then
  OMP_NUM_THREADS=1 $SPINESEG train --resume "$run" --epochs "$FT_EPOCHS" > "$WORK/ft.log" 2>&1
else
  OMP_NUM_THREADS=1 $SPINESEG train --data "$WORK/ds_final" --init-weights "$WORK/run_final/last.pt" \
    --sampling case --loss dicebce --patch 192 --batch-size 8 --epochs "$FT_EPOCHS" \
    --max-steps-per-epoch 100 --foreground-fraction 0.5 --patience 0 --lr 5e-4 --seed 1 \
    --workers 1 --device cpu -o "$run" > "$WORK/ft.log" 2>&1
fi
# 5. Stage 3 (final model only): more real-case weight, optionally 2.5-D input.
$SPINESEG prepare "$WORK/real" -o "$WORK/ds_s3" --add-phantom "$WORK/phantoms" \
  --val $VAL --test 0 --noise-copies 10 --seed 0
run="$WORK/run_s3"
if [ -f "$run/last.pt" ]; then
  OMP_NUM_THREADS=1 $SPINESEG train --resume "$run" --epochs "$S3_EPOCHS" > "$WORK/s3.log" 2>&1
else
  OMP_NUM_THREADS=1 $SPINESEG train --data "$WORK/ds_s3" --init-weights "$WORK/run_ft/last.pt" \
    --context-slices "$CONTEXT_SLICES" --context-mm 3 --sampling case --loss dicebce --patch 192 \
    --batch-size 8 --epochs "$S3_EPOCHS" --max-steps-per-epoch 100 --foreground-fraction 0.5 \
    --patience 0 --lr 3e-4 --seed 2 --workers 1 --device cpu -o "$run" > "$WORK/s3.log" 2>&1
fi
# Then: python tools/ship_model.py "$WORK/run_s3/last.pt" --note "tools/train_shipped_model.sh"
