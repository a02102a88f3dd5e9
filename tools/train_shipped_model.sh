#!/usr/bin/env bash
# Train the shipped default model and its cross-validation folds with spineseg's own commands.
# Resumable: re-running continues every run from its last.pt and skips finished steps.
#   tools/train_shipped_model.sh ../shared/data work/   [BASE_EPOCHS] [FINETUNE_EPOCHS]
# 1. A phantom-only base network (it sees no real patient), 2.5-D input (the slice and the
#    planes 3 mm above and below it), 160² patches on the 1 mm grid.
# 2. tools/crossval.py fine-tunes that base once per fold on the real patients outside the fold
#    (each with 4 noisy/osteoporotic copies) plus the phantoms, every case equally likely, and
#    once on all seven patients ("final"); it scores every held-out patient through
#    spineseg.segment. Three such fine-tunes are averaged into the model to ship (step 3).
set -euo pipefail
SHARED=${1:?path to shared/data}; WORK=${2:?work folder}; BASE_EPOCHS=${3:-20}; FT_EPOCHS=${4:-10}
SPINESEG=${SPINESEG:-.venv/bin/spineseg}; PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$WORK"
# Phantoms without verse005's vertebra shapes (the same person as the verse005 patient, who is
# held out in fold 1), so no fold sees a held-out patient's anatomy.
[ -d "$WORK/phantoms/params" ] || $SPINESEG phantom -o "$WORK/phantoms" --cases 40 --seed 200 \
  --size 256 256 96 --exclude-template verse005
$PYTHON tools/real_cases_as_pairs.py "$SHARED" "$WORK/real"
[ -f "$WORK/ds_base/manifest.json" ] || $SPINESEG prepare "$WORK/phantoms" -o "$WORK/ds_base" \
  --val phantom_000201 --test 0 --seed 0 --no-progress
run="$WORK/run_base"
if [ -f "$run/last.pt" ]; then
  OMP_NUM_THREADS=2 $SPINESEG train --resume "$run" --epochs "$BASE_EPOCHS" > "$WORK/base.log" 2>&1
else
  OMP_NUM_THREADS=2 $SPINESEG train --data "$WORK/ds_base" --model msrunet --width 16 --depth 4 \
    --context-slices 1 --context-mm 3 --loss dicebce --patch 160 --batch-size 8 \
    --epochs "$BASE_EPOCHS" --max-steps-per-epoch 100 --foreground-fraction 0.7 --patience 0 \
    --lr 1e-3 --seed 0 --workers 1 --device cpu -o "$run" > "$WORK/base.log" 2>&1
fi
# 2. Three fine-tunes of that base per fold and on all seven patients: with the acquisition
#    augmentations (constant learning rate, 1,000 updates), without them (same), and without
#    them with nnU-Net's poly decay over 2,000 updates. Each is scored held out on its own.
$PYTHON tools/crossval.py "$SHARED" "$WORK" --base "$run/last.pt" --epochs "$FT_EPOCHS" --jobs 2
$PYTHON tools/crossval.py "$SHARED" "$WORK" --base "$run/last.pt" --epochs "$FT_EPOCHS" --jobs 2 \
  --no-acquisition-augment
$PYTHON tools/crossval.py "$SHARED" "$WORK" --base "$run/last.pt" --epochs $((2 * FT_EPOCHS)) \
  --jobs 2 --no-acquisition-augment --schedule poly
# 3. Their uniform weight average per fold and for "final" (the model to ship), scored held out:
#    the soup beat every single recipe in the four folds (docs/model-card.md).
$PYTHON tools/weight_soup.py "$WORK" --folds fold1,fold2,fold3,fold4,final
$PYTHON tools/crossval.py "$SHARED" "$WORK" --soup --steps score,render
# Then: python tools/ship_model.py "$WORK/run_final_soup/last.pt" --note "tools/train_shipped_model.sh"
