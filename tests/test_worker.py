"""The dynamic batcher: 64 concurrent uploads batched and answered correctly, single flight, chunk budget,
`max_batch_size=1`, graceful shutdown."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.parsing import parse_upload
from app.worker import BatchWorker
from model.checkpoint import load_checkpoint
from tests.conftest import (
    ckpt_bytes,
    distinct_ckpts,
    running_app,
    scrape,
    settings_for,
    unique_seed,
)

pytestmark = pytest.mark.anyio


def batches_over_one(metrics_text: str) -> float:
    """Observations of `sne_batch_size` above 1 (total count minus the `le="1.0"` bucket)."""
    return scrape(metrics_text, "sne_batch_size_count") - scrape(metrics_text, "sne_batch_size_bucket", le="1.0")


async def test_64_concurrent_uploads(svc_predictor_dir, svc_predictor):
    blobs = distinct_ckpts(64, start=unique_seed())
    wants = svc_predictor.predict([load_checkpoint(b) for b in blobs])
    settings = settings_for(svc_predictor_dir, max_wait_ms=100, max_batch_size=32)
    async with running_app(settings) as client:
        before = batches_over_one((await client.get("/metrics")).text)
        responses = await asyncio.gather(
            *(
                client.post("/v1/encode", content=b) if i % 2 else client.post("/v1/encode", files={"file": (f"{i}", b)})
                for i, b in enumerate(blobs)
            )
        )
        assert [r.status_code for r in responses] == [200] * 64
        for r, want in zip(responses, wants):
            body = r.json()
            assert body["cached"] is False
            assert body["embedding"] == pytest.approx(want.embedding, abs=1e-5)
            assert body["predicted_accuracy"] == pytest.approx(want.accuracy, abs=1e-5)
            assert body["predicted_gap"] == pytest.approx(want.gap, abs=1e-5)
            assert body["ood"]["flag"] == want.ood_flag
        worker = client.app.state.worker
        assert worker.encoded == 64 and worker.batches < 64
        after = batches_over_one((await client.get("/metrics")).text)
        assert after > before  # the sne_batch_size histogram saw batches of more than one checkpoint
        assert max(r.json()["timings"]["encode_ms"] for r in responses) > 0


async def test_identical_concurrent_uploads_are_computed_once(svc_predictor_dir):
    data = ckpt_bytes("cnn", unique_seed())
    async with running_app(settings_for(svc_predictor_dir, max_wait_ms=20)) as client:
        responses = await asyncio.gather(*(client.post("/v1/encode", content=data) for _ in range(8)))
        assert [r.status_code for r in responses] == [200] * 8
        assert client.app.state.worker.encoded == 1
        bodies = [r.json() for r in responses]
        assert all(b["embedding"] == bodies[0]["embedding"] for b in bodies)


async def test_batch_size_one(svc_predictor_dir):
    async with running_app(settings_for(svc_predictor_dir, max_batch_size=1, max_wait_ms=50)) as client:
        blobs = distinct_ckpts(4, start=unique_seed())
        responses = await asyncio.gather(*(client.post("/v1/encode", content=b) for b in blobs))
        assert [r.status_code for r in responses] == [200] * 4
        assert client.app.state.worker.batches == 4


async def test_chunk_budget_splits_batches(svc_predictor):
    """CNNs of 542 chunks under a 1200-chunk budget: at most two per forward, and a bigger one runs alone."""
    blobs = [ckpt_bytes("cnn", unique_seed()) for _ in range(5)]
    parsed = [parse_upload(b, str(i), svc_predictor, 65536) for i, b in enumerate(blobs)]
    assert {p.n_chunks for p in parsed} == {542}
    worker = BatchWorker(svc_predictor, max_batch_size=32, max_batch_chunks=1200, max_wait_ms=50)
    sizes = []
    await worker.start()
    try:
        outcomes = await asyncio.gather(*(worker.submit(p) for p in parsed))
        sizes = [times.batch_size for _, times in outcomes]
        alone = BatchWorker(svc_predictor, max_batch_size=32, max_batch_chunks=100, max_wait_ms=1)
        await alone.start()
        (_, times) = await alone.submit(parsed[0])  # over the budget on its own: still encoded
        assert times.batch_size == 1
        await alone.stop()
    finally:
        await worker.stop()
    assert sorted(sizes) == [1, 2, 2, 2, 2] and worker.batches == 3
    wants = svc_predictor.predict([load_checkpoint(b) for b in blobs])
    for (prediction, _), want in zip(outcomes, wants):
        assert prediction.embedding.dtype == np.float32
        np.testing.assert_allclose(prediction.embedding, want.embedding, atol=1e-5)


async def test_graceful_shutdown_finishes_queued_work(svc_predictor_dir):
    """Requests queued when shutdown starts are all encoded and answered; later ones get 503."""
    import httpx

    from app.main import create_app

    app = create_app(settings_for(svc_predictor_dir, max_wait_ms=5000, max_batch_size=64))
    blobs = distinct_ckpts(6, start=unique_seed())
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sne.test") as client:
        tasks = [asyncio.create_task(client.post("/v1/encode", content=b)) for b in blobs]
        worker = app.state.worker
        for _ in range(300):
            if worker.depth == len(blobs):
                break
            await asyncio.sleep(0.01)
        assert worker.depth == len(blobs)  # all waiting for the 5 s batch window
        shutdown = asyncio.create_task(lifespan.__aexit__(None, None, None))
        await asyncio.sleep(0)
        late = await client.post("/v1/encode", content=ckpt_bytes("mlp", unique_seed()))
        # shutting down closes the batch window: the queued ones run now, not after 5 s
        done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=4)
        await asyncio.wait_for(shutdown, timeout=10)
    assert [r.status_code for r in done] == [200] * len(blobs)
    assert worker.batches == 1 and worker.encoded == len(blobs)
    assert late.status_code == 503 and late.json()["error"]["reason"] == "shutting_down"
    assert late.headers["Retry-After"]


async def _until(condition) -> None:
    """Yield to the event loop until `condition()` holds (the caller bounds the wait with wait_for)."""
    while not condition():
        await asyncio.sleep(0)


async def test_stop_timeout_answers_everything(svc_predictor):
    """If shutdown runs out of time, whatever is left is answered with 503, nothing hangs."""
    from app.errors import APIError

    blobs = [ckpt_bytes("mlp", unique_seed()) for _ in range(3)]
    parsed = [parse_upload(b, str(i), svc_predictor, 65536) for i, b in enumerate(blobs)]
    worker = BatchWorker(svc_predictor, max_batch_size=64, max_wait_ms=5000)
    await worker.start()
    tasks = [asyncio.create_task(worker.submit(p)) for p in parsed]
    await asyncio.wait_for(_until(lambda: worker.depth == len(parsed)), timeout=5)  # all queued, none encoded
    await worker.stop(timeout=0)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
    for r in results:
        assert not isinstance(r, BaseException) or (isinstance(r, APIError) and r.status == 503), r
    assert any(isinstance(r, APIError) for r in results), results
    with pytest.raises(APIError) as refused:
        await worker.submit(parsed[0])
    assert refused.value.status == 503 and refused.value.headers["Retry-After"]
