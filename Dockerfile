# SNE weight-space encoding service (`sne serve` on port 8000).
#
# CPU image (default):
#   docker build -t sne-service:0.1.0 .
# CUDA image: a CUDA base and PyTorch's CUDA wheel index, e.g.
#   docker build -t sne-service:0.1.0-cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all -p 8000:8000 -e SNE_DEVICE=cuda sne-service:0.1.0-cuda
#
# Stages: `base` (a Python >= 3.11 on BASE_IMAGE), `builder` (a virtualenv with
# torch and the package, default predictor included), `runtime` (the virtualenv
# copied onto a fresh base, run as a non-root user).

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# python:*-slim already has Python; a CUDA (Ubuntu) base gets the distribution's python3.
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required, got " + sys.version'

FROM base AS builder
# Where torch==2.13.0 comes from: the CPU wheel by default, a CUDA index (cu126, cu128, ...) for GPU images.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, in its own layer: `pip install .` then finds torch==2.13.0 satisfied and keeps this build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"
WORKDIR /src
# README* (the package's long description) is optional for the build.
COPY pyproject.toml README* ./
COPY app/ app/
COPY model/ model/
RUN pip install . \
    && cd / \
    && python -c "import importlib.metadata as md; v = md.version('torch'); assert v.split('+')[0] == '2.13.0', v" \
    && python -c "import pathlib, model; p = pathlib.Path(model.__file__).parent / 'predictors' / 'default'; assert p.is_dir() and any(p.iterdir()), f'default predictor missing from the installed package: {p}'" \
    && sne --help > /dev/null

FROM base AS runtime
LABEL org.opencontainers.image.title="sne-service" \
      org.opencontainers.image.description="Weight-space encoding service: SNE embeddings and predicted accuracy of checkpoints"
RUN groupadd --system --gid 10001 sne \
    && useradd --system --uid 10001 --gid sne --home-dir /home/sne --create-home --shell /usr/sbin/nologin sne
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/sne \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /home/sne
# Numeric user so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# Compile the statistics' loops (numba) into ~/.cache/numba now, so a container does not do it at startup
# (where /home/sne is a fresh volume, as in deploy/k8s, the service compiles them once at startup: ~3 s).
RUN python -c "from model import stats_pass; stats_pass.warm_up()"
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["sne", "serve", "--host", "0.0.0.0", "--port", "8000"]
