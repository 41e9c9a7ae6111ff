"""The parse stage: a parse that runs too long is answered 422 `parse_timeout`, and its thread (which cannot
be killed) keeps its slot until it really ends, so runaway parses never outnumber `SNE_PARSE_WORKERS`."""
from __future__ import annotations

import threading
import time

import pytest

import app.service
from tests.conftest import ckpt_bytes, running_app, settings_for

pytestmark = pytest.mark.anyio


async def test_slow_parse_is_a_422_and_keeps_its_slot(svc_predictor_dir, monkeypatch) -> None:
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()
    real = app.service.parse_upload

    def stuck_parse(*args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            release.wait(30)  # a parse stuck in a pathological file, until the test lets it go
            return real(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(app.service, "parse_upload", stuck_parse)
    timeout = 0.5
    settings = settings_for(svc_predictor_dir, parse_timeout_seconds=timeout, parse_workers=1, lru_size=0)
    async with running_app(settings) as client:
        t0 = time.perf_counter()
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 21))
        took = time.perf_counter() - t0
        assert r.status_code == 422 and r.json()["error"]["reason"] == "parse_timeout"
        assert timeout <= took < timeout + 3, took
        assert client.app.state.service._parse_slots.locked(), "the abandoned parse gave its slot back too early"
        release.set()
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 22))  # the slot comes back when it ends
        assert r.status_code == 200
    assert most == 1
