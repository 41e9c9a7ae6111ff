#!/usr/bin/env bash
# Twice the zoo (docs/predictor-history.md, "Twice the zoo"): the shipped build learns from arch1-digits at 600 runs; the build
# before it (predictor 2026-12-07-54f4dea71516, commit 16029af) learned from the first 300 of them. This scores
# that previous predictor on the shipped zoo's test split (414 checkpoints; its own was the 206 of the first
# 300 runs, which this split contains), with every baseline fit on its own 944 training checkpoints, so
# the two builds and their baselines are compared on one test split:
#   eval-scale/prev-300/results.md  (previous SNE and baselines, trained on 300 runs)
#   eval/results.md                 (the build's own table: the shipped SNE and baselines, trained on 600 runs)
# Needs the build's zoos (scripts/build_default_predictor.sh) and git history. About 2 min on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
SNE=${SNE:-.venv/bin/sne}
PY=${PY:-.venv/bin/python}
N_BOOT=${N_BOOT:-200}
PREV=${PREV:-16029af}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

[ -d zoos/arch1-digits ] || { echo "zoos/arch1-digits is missing: run the build's zoo commands first" >&2; exit 2; }
# the first 300 runs alone, as the build makes them before it extends the zoo
$SNE zoo --out zoos/arch1-digits-300 --arch arch1 --dataset digits --runs 300
rm -rf runs/prev-300 && mkdir -p runs/prev-300
git archive "$PREV" model/predictors/default | tar -x -C runs/prev-300 --strip-components 3
# its baselines learn from the 300-run train split it learned from
"$PY" - <<'EOF'
import json, pathlib
card = pathlib.Path("runs/prev-300/card.json")
c = json.loads(card.read_text())
c["zoo"]["dirs"] = [str(pathlib.Path("zoos/arch1-digits-300").resolve())]
card.write_text(json.dumps(c, indent=2))
EOF
$SNE eval --predictor runs/prev-300 --zoo zoos/arch1-digits --n-boot "$N_BOOT" --out eval-scale/prev-300
head -n 5 eval-scale/prev-300/results.md
