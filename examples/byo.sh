#!/usr/bin/env bash
# README, "Bring your own checkpoints", end to end: build a sweep, label it, train two predictors (LIR on),
# evaluate them against the statistics baselines, serve both from one process and gate a checkpoint with each
# by name (remote and --local). tests/test_byo.py runs it small (RUNS=20 EPOCHS=2 CONFIG=tiny).
set -euo pipefail
OUT=${OUT:-byo}          # everything goes here (checkpoints, labels, predictors, evaluation)
RUNS=${RUNS:-40}         # runs per family; each saves 3 checkpoints
EPOCHS=${EPOCHS:-12}     # SNE training epochs
CONFIG=${CONFIG:-small}  # SNE size (tiny for a smoke run)
THREADS=${THREADS:-2}
SNE=${SNE:-sne}
PY=${PY:-python}
PORT=${PORT:-$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
MIN_ACCURACY=${MIN_ACCURACY:-0.0}                 # gate threshold; 0.0 so a smoke run always passes
CKPT=${CKPT:-$OUT/mlp/mlp-r001-e6.safetensors}   # the checkpoint step 5 gates

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

# 4. both predictors (and the shipped default) from one service; its log goes to $OUT/serve.log
URL=http://127.0.0.1:$PORT
SNE_PREDICTORS_DIR="$OUT/predictors" SNE_WARMUP="${SNE_WARMUP:-true}" SNE_TORCH_THREADS="$THREADS" \
  $SNE serve --port "$PORT" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true' EXIT
get() {  # GET $URL$1 with python (curl may not be installed); prints the body, fails unless 200
  $PY - "$URL$1" <<'PYEOF'
import os, sys, urllib.request
key = os.environ.get("SNE_API_KEY")
req = urllib.request.Request(sys.argv[1], headers={"X-API-Key": key} if key else {})
try:
    with urllib.request.urlopen(req, timeout=5) as resp:
        sys.stdout.write(resp.read().decode())
except OSError as e:  # URLError, HTTPError (503 while starting), timeouts
    sys.exit(f"GET {sys.argv[1]}: {e}")
PYEOF
}
deadline=$((SECONDS + ${START_TIMEOUT:-60}))  # start-up: import torch, load and warm up three predictors
until get /readyz >/dev/null 2>&1; do
  if ! kill -0 "$SERVER" 2>/dev/null || ((SECONDS >= deadline)); then
    echo "sne serve is not ready at $URL (exited or over ${START_TIMEOUT:-60} s); its log:" >&2
    cat "$OUT/serve.log" >&2; exit 2
  fi
  sleep 0.5
done
echo "serving at $URL: $(get /v1/predictors | $PY -c 'import json, sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["predictors"]))')"

# 5. gate one checkpoint with each predictor by name (exit 0 pass, 1 fail, 2 error), then in-process (--local)
mkdir -p "$OUT/gate"
for name in mlp-digits cnn-digits; do
  SNE_URL="$URL" $SNE gate "$CKPT" --predictor "$name" --min-accuracy "$MIN_ACCURACY" --json \
    | tee "$OUT/gate/remote-$name.json"
done
SNE_PREDICTORS_DIR="$OUT/predictors" $SNE gate "$CKPT" --local --predictor mlp-digits \
  --min-accuracy "$MIN_ACCURACY" --json | tee "$OUT/gate/local-mlp-digits.json"
