"""Fairness: a large checkpoint (over `SNE_LARGE_CHUNKS`) is encoded in its own lane, so small uploads are
answered while it encodes; with one lane they wait behind it, and `SNE_ENCODE_TIMEOUT_SECONDS` turns the
wait into a clear 504 instead of an open-ended stall.

The large forward is held (an event) instead of made slow, so the test does not depend on machine speed.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.parsing import parse_upload
from model.admission import Limits
from model.predictor import Predictor
from tests.conftest import ckpt_bytes, running_app, settings_for

pytestmark = pytest.mark.anyio
LARGE = 100  # chunks: the CNN fixture is over it, the MLP under it


def hold_large_forwards(worker, release: threading.Event, entered: threading.Event) -> None:
    """Make `worker` block in its forward thread on any batch holding a checkpoint over LARGE chunks."""
    forward = worker._forward

    def held(items):
        if any(p.n_chunks > LARGE for p in items):
            entered.set()
            release.wait(30)
        return forward(items)

    worker._forward = held


def sizes(predictor_dir) -> tuple[int, int]:
    p = Predictor.load(predictor_dir)
    big, small = ckpt_bytes("cnn", 31), ckpt_bytes("mlp", 32)
    return parse_upload(big, "b", p, Limits()).n_chunks, parse_upload(small, "s", p, Limits()).n_chunks


async def test_small_uploads_pass_a_large_one_in_its_own_lane(svc_predictor_dir) -> None:
    big_chunks, small_chunks = sizes(svc_predictor_dir)
    assert small_chunks <= LARGE < big_chunks
    release, entered = threading.Event(), threading.Event()
    settings = settings_for(svc_predictor_dir, large_chunks=LARGE, encode_timeout_seconds=30, lru_size=0)
    async with running_app(settings) as client:
        service = client.app.state.service
        assert service.large_worker is not None
        hold_large_forwards(service.large_worker, release, entered)
        big = asyncio.create_task(client.post("/v1/encode", content=ckpt_bytes("cnn", 31)))
        await asyncio.to_thread(entered.wait, 30)  # the large one is in its forward, and stays there
        t0 = time.perf_counter()
        for seed in range(40, 45):
            r = await client.post("/v1/encode", content=ckpt_bytes("mlp", seed))
            assert r.status_code == 200
        small_s = time.perf_counter() - t0
        assert not big.done()
        release.set()
        r = await big
        assert r.status_code == 200 and len(r.json()["layers"]) == 4
    assert small_s < 20  # five small encodes; they never waited for the held forward (30 s)


async def test_one_lane_small_uploads_wait_and_the_deadline_answers_504(svc_predictor_dir) -> None:
    release, entered = threading.Event(), threading.Event()
    timeout = 1.0
    settings = settings_for(svc_predictor_dir, large_chunks=0, encode_timeout_seconds=timeout, lru_size=0)
    try:
        async with running_app(settings) as client:
            service = client.app.state.service
            assert service.large_worker is None
            hold_large_forwards(service.worker, release, entered)
            big = asyncio.create_task(client.post("/v1/encode", content=ckpt_bytes("cnn", 33)))
            await asyncio.to_thread(entered.wait, 30)
            t0 = time.perf_counter()
            r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 34))
            took = time.perf_counter() - t0
            assert r.status_code == 504 and r.json()["error"]["reason"] == "encode_timeout"
            assert "SNE_ENCODE_TIMEOUT_SECONDS" in r.json()["error"]["message"]
            assert timeout <= took < timeout + 5
            r = await big
            assert r.status_code == 504  # the held one passed its deadline too
            release.set()
            r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 35))  # the lane works again
            assert r.status_code == 200
    finally:
        release.set()
