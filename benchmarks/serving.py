"""The service in a subprocess, and fresh checkpoints to send it, for the benchmarks that drive it over real
HTTP (load, service, real_service).

One helper so every benchmark starts the server the way `sne serve` does (`app.server_config`), with only the
`SNE_*` settings it names (the caller's environment's others are cleared), and stops it even on failure.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import torch
from safetensors.torch import save

from tests.nets import arch1, state

REPO = Path(__file__).resolve().parents[1]


def checkpoint_source(first_seed: int) -> Callable[[], bytes]:
    """A function returning, on each call, an Arch1 CNN checkpoint (4,970 parameters) never returned before
    (seeds count up from `first_seed`): every request of a load run is a cold encode."""
    seeds = iter(range(first_seed, 10**9))

    def new_checkpoint() -> bytes:
        torch.manual_seed(next(seeds))
        return save(state(arch1()))

    return new_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(env: dict[str, str], ready_seconds: float = 180.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`sne serve` on a free loopback port with these `SNE_*` settings; yields (URL, process) once `/readyz`
    answers 200. Its log goes to a temporary file (a pipe nobody reads would block a chatty server)."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("SNE_")}
    full.update(env, PYTHONPATH=str(REPO))
    full.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full, stdout=subprocess.DEVNULL, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_seconds
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"`sne serve` exited with {proc.returncode}: {log.read()[-2000:].decode(errors='replace')}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"`sne serve` not ready after {ready_seconds:.0f} s")
                time.sleep(0.2)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
