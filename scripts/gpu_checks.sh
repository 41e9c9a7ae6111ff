#!/usr/bin/env bash
# The GPU measurements the real-checkpoints issue asks for (encode on a GPU >= 10x the CPU figure), as one
# call on a lent machine: `bash scripts/device_wheels.sh` here first, then the device tool's
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=540)
# Builds the benchmark checkpoints there (they are git-ignored, so they do not travel: about 1 min for the
# 1.1 B file) and runs benchmarks/real_checkpoints.py with `--device cuda`, which times every checkpoint on the
# CPU (OMP_NUM_THREADS=2, the issue's figure) and on the GPU in the same run. Output: the table, also in
# $OUT/gpu_checks.md. Without a GPU (DEVICE=cpu, to try the script here) it runs the CPU column alone.
#
#   ONLY="resnet18 minilm vit_b16 bert_base gpt2_fp16 llama_1b_bf16" REPEAT=3 bash scripts/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root (on the device machine a copy of the tree, not always a git repo)
py=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sne-site .whl/*.whl
  export PYTHONPATH=/tmp/sne-site:$PWD
else
  export PYTHONPATH=$PWD
fi
out=${OUT:-$(mktemp -d)}
device=${DEVICE:-cuda}
only=${ONLY:-resnet18 minilm vit_b16 bert_base gpt2_fp16 llama_1b_bf16}
"$py" - "$device" <<'PY'
import sys, torch
print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}"
      + (f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("error: DEVICE=cuda but torch sees no GPU")
PY
# shellcheck disable=SC2086  # ONLY is a list of names
PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 "$py" -m benchmarks.real_checkpoints --device "$device" --only $only \
  --no-gap --curve --ww-timeout 1 --repeat "${REPEAT:-3}" 2>&1 | grep -v "^Warning\|warn(" | tee "$out/gpu_checks.md"
