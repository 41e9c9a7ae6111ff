#!/usr/bin/env bash
# The wheels the lent GPU machine lacks (its image has torch, numba, scipy, scikit-learn, safetensors, typer and
# rich, but not pydantic or the service's packages; /work/.library/device/KINDS.md), downloaded here into
# .whl/ (git-ignored) at the versions this checkout's .venv runs, so `scripts/gpu_checks.sh` can install them
# there with no network. Run once, then carry `.whl` in the device call (scripts/gpu_checks.sh says how).
#
#   bash scripts/device_wheels.sh            # PYVER=3.12 (the GPU image's python3); DEST=.whl
set -euo pipefail
root=$(git rev-parse --show-toplevel)
pyver=${PYVER:-3.12}
dest=${DEST:-$root/.whl}
pip=${PIP:-$root/.venv/bin/pip}
pkgs=(pydantic pydantic_core pydantic-settings annotated-types typing-inspection typing_extensions python-dotenv
      fastapi annotated-doc starlette uvicorn cachetools redis python-json-logger python-multipart fastapi_offline)
pins=()
for p in "${pkgs[@]}"; do
  v=$("$pip" show "$p" 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$v" ] || { echo "error: $p is not installed in $pip's environment" >&2; exit 2; }
  pins+=("$p==$v")
done
rm -rf "$dest" && mkdir -p "$dest"
plats=()
for n in 28 27 17; do plats+=(--platform "manylinux_2_${n}_x86_64"); done
"$pip" download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${plats[@]}" --platform manylinux2014_x86_64 --platform any -d "$dest" "${pins[@]}"
ls "$dest"
du -sh "$dest"
