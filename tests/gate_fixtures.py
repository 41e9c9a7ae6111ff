"""Helpers for the gate tests: a calibrated fixture predictor, free ports, a live service in a thread."""
from __future__ import annotations

import inspect
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.predictor import Predictor
from tests.nets import checkpoint_bytes

#: half-width of the fixture predictor's 90% conformal interval
FIXTURE_Q = 0.05
#: kNN OOD threshold: other arch1 seeds score ~0.2 against the reference, an MLP ~1.0
FIXTURE_OOD_THRESHOLD = 0.5


def make_fixture_predictor(out: Path) -> Path:
    """A predictor directory with a conformal interval and an OOD reference (arch1 seeds 1-5).

    The weights are the seeded random ones of `Predictor.untrained()`; the card claims `trained: true`
    only so the gate's trained path (no warning, calibrated interval, OOD threshold) can be exercised.
    """
    pred = Predictor.untrained()
    ckpts = [load_checkpoint(checkpoint_bytes("arch1", s)) for s in range(1, 6)]
    reference = torch.from_numpy(np.stack([p.embedding for p in pred.predict(ckpts)]))  # [5, E]
    pred.reference = reference
    pred.card = pred.card.updated(
        name="gate-fixture",
        version="fixture-" + pred.version.split("-")[-1],
        trained=True,
        note="test fixture: random weights with a made-up calibration",
        conformal={"accuracy": {"0.90": FIXTURE_Q}},
        ood={"threshold": FIXTURE_OOD_THRESHOLD, "k": 5},
    )
    pred.save(out)
    # the reference is stored as fp16: check the fixture still separates in- from out-of-distribution
    loaded = Predictor.load(out)
    a, m = loaded.predict([load_checkpoint(checkpoint_bytes("arch1", 0)), load_checkpoint(checkpoint_bytes("mlp", 0))])
    assert not a.ood_flag and m.ood_flag, (a.ood_score, m.ood_score)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def patched_env(**values: str | None) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_app(**settings: object):
    """`app.main.create_app(...)` with these settings, whatever way create_app takes them.

    The caller puts the same settings in the environment (`patched_env(SNE_<NAME>=...)`) and keeps it patched
    while serving; the settings cache is refilled from it here, so an app that reads `get_settings()` agrees.
    """
    from app.main import create_app
    from app.settings import Settings, get_settings

    get_settings.cache_clear()
    get_settings()  # cache the patched environment's settings now, whenever the app reads them
    params = inspect.signature(create_app).parameters
    if "settings" in params:
        return create_app(settings=Settings(**settings))
    if params:
        first = next(iter(params.values()))
        if first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD) and first.default is first.empty:
            return create_app(Settings(**settings))
    return create_app()


@contextmanager
def live_server(asgi_app, port: int | None = None, ready_path: str = "/healthz", timeout: float = 60.0) -> Iterator[str]:
    """Serve `asgi_app` with uvicorn in a daemon thread; yield its base URL once `ready_path` answers 200."""
    import httpx
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="sne-test-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the test server exited during startup")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not answer {ready_path} within {timeout:g}s")
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
