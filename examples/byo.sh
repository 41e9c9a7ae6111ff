#!/usr/bin/env bash
# README, "Bring your own checkpoints", end to end: build a sweep, label it, train two predictors (LIR on),
# evaluate them against the statistics baselines. tests/test_byo.py runs it small (RUNS=20 EPOCHS=2 CONFIG=tiny).
set -euo pipefail
OUT=${OUT:-byo}          # everything goes here (checkpoints, labels, predictors, evaluation)
RUNS=${RUNS:-40}         # runs per family; each saves 3 checkpoints
EPOCHS=${EPOCHS:-12}     # SNE training epochs
CONFIG=${CONFIG:-small}  # SNE size (tiny for a smoke run)
THREADS=${THREADS:-2}
SNE=${SNE:-sne}
PY=${PY:-python}

# 1. your checkpoints and a labels CSV per family (path, accuracy, run, family, dataset, gap, ...)
$PY examples/byo_sweep.py --out "$OUT" --runs "$RUNS" --threads "$THREADS"

# 2. one predictor per family, named so the service can serve both and a gate can pick one
for fam in mlp cnn; do
  $SNE train --labels "$OUT/$fam.csv" --out "$OUT/predictors/$fam-digits" --name "$fam-digits" \
    --config "$CONFIG" --epochs "$EPOCHS" --threads "$THREADS"
done

# 3. each predictor on both test splits, beside the pooled-statistics GBM, STATNN and MLP baselines
for fam in mlp cnn; do
  $SNE eval --predictor "$OUT/predictors/$fam-digits" --labels "$OUT/mlp.csv" --labels "$OUT/cnn.csv" \
    --out "$OUT/eval/$fam-digits" --threads "$THREADS" --update-card
done
