#!/usr/bin/env bash
# The paper's Tables 1–3 under the `converged` profile, unattended and resumable.
#   tools/run_converged_tables.sh SHARED_DATA WORK OUT [SECONDS]
#   e.g. tools/run_converged_tables.sh ../shared/data work docs/results/converged 10800
# 1. Builds the dataset once (2 mm in-plane grid): 40 phantoms without verse005's vertebra
#    shapes plus the seven real patients; test = ts_abdomen, ts_chest, verse005 (two whole-body
#    scans and one axial spine crop), validation = verse008, training = verse006, verse007,
#    verse012 (each with 4 noisy/osteoporotic copies) and the phantoms. The split is fixed here,
#    before any cell is scored, and recorded in OUT/experiment.json.
# 2. Starts JOBS (default 2) `spineseg experiment all` workers on one torch thread each; they
#    share the runs folder and take one unfinished seed at a time (a seed in training is locked).
#    After SECONDS (default: no limit) the workers are stopped; a killed seed resumes from its
#    last finished epoch on the next call.
# 3. Writes the tables, curves and figures of every finished seed (--report-only) into OUT, with
#    each finished seed's result in OUT/cells/. With COMMIT=1, commits OUT (and nothing else).
# Environment: PROFILE (converged; `smoke` checks all of this in minutes), SEEDS (profile's),
# JOBS (2), PHANTOMS (40), SPINESEG, PYTHON (the project's venv), RUNS (WORK/runs_$PROFILE),
# DATASET (WORK/ds_converged).
set -euo pipefail
SHARED=${1:?path to shared/data}; WORK=${2:?work folder}; OUT=${3:?output folder}
SECONDS_LIMIT=${4:-0}
PROFILE=${PROFILE:-converged}; JOBS=${JOBS:-2}; PHANTOMS=${PHANTOMS:-40}
SPINESEG=${SPINESEG:-.venv/bin/spineseg}; PYTHON=${PYTHON:-.venv/bin/python}
DATASET=${DATASET:-$WORK/ds_converged}; RUNS=${RUNS:-$WORK/runs_$PROFILE}
mkdir -p "$WORK" "$RUNS"
phantoms=$WORK/phantoms_nov005_$PHANTOMS
[ -d "$phantoms/params" ] || $SPINESEG phantom -o "$phantoms" --cases "$PHANTOMS" --seed 200 \
  --size 256 256 96 --exclude-template verse005
$PYTHON tools/real_cases_as_pairs.py "$SHARED" "$WORK/real" > /dev/null
[ -f "$DATASET/manifest.json" ] || $SPINESEG prepare "$WORK/real" -o "$DATASET" --spacing 2 \
  --add-phantom "$phantoms" --val verse008 --test ts_abdomen,ts_chest,verse005 \
  --noise-copies 4 --seed 0 --no-progress
seeds=(); [ -n "${SEEDS:-}" ] && seeds=(--seeds "$SEEDS")
common=(--data "$DATASET" --profile "$PROFILE" -o "$OUT" --runs "$RUNS" --device cpu "${seeds[@]}")
limit=(); [ "$SECONDS_LIMIT" -gt 0 ] && limit=(timeout --signal=TERM "$SECONDS_LIMIT")
pids=()
for k in $(seq 1 "$JOBS"); do
  OMP_NUM_THREADS=1 "${limit[@]}" $SPINESEG experiment all "${common[@]}" \
    >> "$RUNS/worker$k.log" 2>&1 &
  pids+=($!)
  sleep 5  # the first worker claims OUT before the others look at it
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
# 124: the time limit stopped a worker, the campaign continues on the next call.
[ "$status" -eq 0 ] || [ "$status" -eq 124 ] || echo "a worker failed ($status); see $RUNS/worker*.log" >&2
OMP_NUM_THREADS=1 $SPINESEG experiment all "${common[@]}" --report-only >> "$RUNS/report.log" 2>&1
done_seeds=$(find "$OUT/cells" -name 'seed*.json' | wc -l)
echo "$done_seeds finished seed(s) in $OUT/cells"
if [ "${COMMIT:-0}" = 1 ]; then
  git add -- "$OUT"
  git commit -q -m "Tables 1–3, $PROFILE profile: $done_seeds finished seed(s)" -- "$OUT" || true
fi
