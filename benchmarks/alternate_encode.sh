#!/usr/bin/env bash
# Encode time of this tree against another commit, in alternating fresh processes (these machines drift by
# 20-40 % within minutes, so the two sides take turns): `sne encode`'s path as benchmarks/real_checkpoints.py
# times it (`--child encode FILE cpu budget default`), with the file in the page cache.
#
#   bash benchmarks/alternate_encode.sh BASE_COMMIT THREADS PAIRS NAME...
#   e.g. bash benchmarks/alternate_encode.sh 7099e6f 2 3 resnet18 minilm vit_b16 bert_base gpt2_fp16 llama_1b_bf16
#
# NAMEs are benchmarks/real_checkpoints.py's checkpoints (built into benchmarks/out/ckpts if missing). Prints
# one line a run (side, wall s, CPU s, overlapped, predicted accuracy), then per checkpoint and side the range
# and median of the wall seconds. The base commit is checked out in a temporary worktree, removed at the end.
set -euo pipefail
base=$1 threads=$2 pairs=$3
shift 3
root=$(git rev-parse --show-toplevel)
py=${PYTHON:-$root/.venv/bin/python}
old=$(mktemp -d)
git -C "$root" worktree add -q --detach "$old" "$base"
trap 'git -C "$root" worktree remove --force "$old"' EXIT
out=$(mktemp)
for name in "$@"; do
  file=$(cd "$root" && "$py" -c "from pathlib import Path; from benchmarks.real_checkpoints import ensure; print(ensure(Path('benchmarks/out/ckpts'), '$name').resolve())")
  for _ in $(seq "$pairs"); do
    for side in base new; do
      dir=$root; [ "$side" = base ] && dir=$old
      (cd "$dir" && OMP_NUM_THREADS=$threads "$py" -m benchmarks.real_checkpoints --child encode "$file" cpu budget default 2>/dev/null) |
        "$py" -c "import json, sys; r = json.load(sys.stdin); print('$name', '$side', round(r['encode_s'], 3), round(r['cpu_s'], 2), r['overlapped'], round(r['accuracy'], 6))" |
        tee -a "$out"
    done
  done
done
"$py" - "$out" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, side, wall, *_ = line.split()
    runs[name, side].append(float(wall))
for (name, side), w in runs.items():
    print(f"{name} {side}: {min(w):.2f}-{max(w):.2f} s (median {statistics.median(w):.2f})")
PY
rm -f "$out"
