"""Shared helpers of the service and gate tests (test_service*.py, test_cache*.py, test_worker*.py, test_gate.py).

* `svc_predictor_dir`: a calibrated fixture predictor (random weights, made-up conformal quantile, OOD
  reference of a few CNNs, gap head on, a card with Kendall-tau metrics) saved once per session.
* `running_app(settings)`: the real app with its lifespan, behind an `httpx.AsyncClient` (ASGI transport).
* `redis_url` / `PrivateRedis`: the shared Redis at 127.0.0.1:6379 with a per-test key prefix (keys
  removed afterwards), or a private `redis-server` the test may stop and restart.
* `live_server`: uvicorn on a free loopback port in a thread (real HTTP).
"""
from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save
from torch import nn

from model.checkpoint import load_checkpoint
from model.predictor import Predictor
from tests.nets import arch1, state

SHARED_REDIS = "redis://127.0.0.1:6379/15"
FIXTURE_Q = 0.05  # conformal half-width of the fixture predictor
FIXTURE_OOD_THRESHOLD = 0.5  # other seeds of the fixture CNN score ~0.2, an MLP ~1.0


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for training-heavy tests: on a shared 2-core box, 2 OpenMP threads can run 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------- networks


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def cnn() -> nn.Module:
    """The small CNN of the brief (= tests.nets.arch1)."""
    return arch1()


BUILDERS = {"cnn": cnn, "mlp": tiny_mlp}


def ckpt_bytes(kind: str = "cnn", seed: int = 0) -> bytes:
    """A real torch module's state dict, saved with `safetensors.torch.save`."""
    torch.manual_seed(seed)
    return save(state(BUILDERS[kind]()))


def distinct_ckpts(n: int, start: int = 0) -> list[bytes]:
    """`n` distinct checkpoints, alternating the CNN and the MLP."""
    return [ckpt_bytes("cnn" if i % 2 == 0 else "mlp", start + i) for i in range(n)]


def unique_seed() -> int:
    """A seed no other test uses (so a shared cache never already holds the checkpoint)."""
    return uuid.uuid4().int % (2**31)


# --------------------------------------------------------------------------------------------- predictors


def make_predictor_dir(out: Path) -> Path:
    pred = Predictor.untrained()
    ref = [load_checkpoint(ckpt_bytes("cnn", s)) for s in range(1001, 1006)]
    pred.reference = torch.from_numpy(np.stack([p.embedding for p in pred.predict(ref)]))
    pred.card = pred.card.updated(
        name="svc-fixture",
        version="svc-" + pred.version.split("-")[-1],
        trained=True,
        predicts_gap=True,
        note="test fixture: random weights, made-up calibration",
        zoo={"name": "fixture", "checkpoints": 5},
        metrics={"kendall_tau": {"test": {"sne": 0.5, "stat_features": 0.4}}},
        conformal={"accuracy": {"0.90": FIXTURE_Q}},
        ood={"threshold": FIXTURE_OOD_THRESHOLD, "k": 5},
    )
    pred.save(out)
    return out


@pytest.fixture(scope="session")
def svc_predictor_dir(tmp_path_factory) -> Path:
    return make_predictor_dir(tmp_path_factory.mktemp("svc-predictor"))


@pytest.fixture(scope="session")
def svc_predictor(svc_predictor_dir) -> Predictor:
    """The same predictor, loaded directly: what the service must agree with."""
    return Predictor.load(svc_predictor_dir)


@pytest.fixture(scope="session")
def untrained_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untrained")
    Predictor.untrained().save(out)
    return out


def settings_for(predictor_dir: Path | None, **overrides):
    from app.settings import Settings

    base = dict(predictor_path=predictor_dir, redis_url=None, device="cpu", api_keys=[], max_wait_ms=2.0)
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def running_app(settings, app=None) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan included) behind an AsyncClient; the client has `.app` for inspection."""
    from app.main import create_app

    app = app or create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sne.test", timeout=120) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


# --------------------------------------------------------------------------------------------- metrics


def scrape(text: str, metric: str, /, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(metric) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != metric:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def metric_value(metric: str, /, **labels: str) -> float:
    """Sum of the samples of `metric` in the process registry whose labels include `labels` (0 when absent):
    a metric labelled per predictor reads as its total unless a predictor is named."""
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
    )


# --------------------------------------------------------------------------------------------- redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    """Poll `url`/readyz until the server process answers 200; fail with its output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.1)


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


@pytest.fixture
def redis_url() -> Iterator[tuple[str, str]]:
    """(url, key prefix) on the shared Redis; every key under the prefix is deleted afterwards."""
    if not _ping(SHARED_REDIS):
        pytest.skip("no Redis answers at 127.0.0.1:6379 (.ci/run starts one)")
    import redis

    prefix = f"sne-test-{uuid.uuid4().hex[:10]}:"
    yield SHARED_REDIS, prefix
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


class PrivateRedis:
    """A `redis-server` subprocess on a free port that a test can stop and start again."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.url):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    r = PrivateRedis()
    r.start()
    try:
        yield r
    finally:
        r.stop()


# --------------------------------------------------------------------------------------------- live server


@contextlib.contextmanager
def live_server(app, timeout: float = 60.0, **options) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a daemon thread; yield its base URL.

    `options` are more `uvicorn.Config` arguments (e.g. `app.server_config.uvicorn_options`' limits).
    """
    import uvicorn

    port = free_port()
    config = {"log_level": "warning", "lifespan": "on", **options, "host": "127.0.0.1", "port": port}
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(target=server.run, name="sne-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
