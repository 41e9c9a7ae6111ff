"""The result cache: compact records, the in-process LRU, and a real Redis (shared by two app instances,
stopped mid-test, restarted)."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import redis

from app.cache import MAGIC, LRUCache, RedisCache, cache_key, pack_encoding, unpack_encoding
from app.encoding import Encoding, StageTimes
from app.parsing import LayerRow
from model.predictor import Prediction
from tests.conftest import (
    ckpt_bytes,
    metric_value,
    running_app,
    settings_for,
    unique_seed,
)

pytestmark = pytest.mark.anyio


def sample_result(seed: int = 0, gap: float | None = 0.02) -> Encoding:
    rng = np.random.default_rng(seed)
    prediction = Prediction(
        embedding=rng.standard_normal(64).astype(np.float32),
        layer_embeddings=rng.standard_normal((3, 32)).astype(np.float32),
        accuracy=0.8125,
        gap=gap,
        low=0.76,
        high=0.86,
        coverage=0.9,
        ood_score=None,
        ood_flag=False,
    )
    return Encoding(
        sha256=f"{seed:064x}",
        prediction=prediction,
        times=StageTimes(1.0, 2.0, 3.0, 4),
        layers=[LayerRow("features.0", "conv2d", 0, [16, 1, 3, 3], 160, 17, 17), LayerRow("fc", "linear", 1, [10, 16], 170, 11, 4),
                LayerRow("bn", "norm", 2, [16], 32, 2, 2)],
        skipped=[{"name": "bn.num_batches_tracked", "dtype": "I64", "shape": [], "reason": "integer tensor"}],
    )


def test_record_roundtrip_is_exact_and_compact():
    enc = sample_result()
    raw = pack_encoding(enc)
    back_enc = unpack_encoding(raw)
    r, back = enc.prediction, back_enc.prediction
    assert np.array_equal(back.embedding, r.embedding) and back.embedding.dtype == np.float32
    assert np.array_equal(back.layer_embeddings, r.layer_embeddings) and back.layer_embeddings.dtype == np.float32
    assert (back.accuracy, back.gap, back.low, back.high, back.coverage, back.ood_score, back.ood_flag) == (
        0.8125, 0.02, 0.76, 0.86, 0.9, None, False)
    assert back_enc.layers == enc.layers and back_enc.skipped == enc.skipped and back_enc.sha256 == enc.sha256
    # a record describes the checkpoint; a read of it is a cache hit with no stage times of its own
    assert back_enc.cached is True and back_enc.times == StageTimes()
    as_json = json.dumps({"e": r.embedding.tolist(), "l": r.layer_embeddings.tolist()})
    assert len(raw) < 4 * (64 + 96) + 600 < len(as_json)  # float32 bytes + a small header, not JSON floats
    for bad in (b"", b"nope", raw[:-4], b"XXXX" + raw[4:], raw[:10]):
        with pytest.raises(ValueError):
            unpack_encoding(bad)


async def test_lru_evicts_and_counts():
    lru = LRUCache(2)
    hits, misses = metric_value("sne_cache_hits_total"), metric_value("sne_cache_misses_total")
    await lru.set("a", sample_result(1))
    await lru.set("b", sample_result(2))
    assert (await lru.get("a")) is not None  # a is now the most recent
    await lru.set("c", sample_result(3))
    assert await lru.get("b") is None and await lru.get("a") is not None and await lru.get("c") is not None
    assert len(lru) == 2
    assert metric_value("sne_cache_hits_total") == hits + 3
    assert metric_value("sne_cache_misses_total") == misses + 1
    off = LRUCache(0)
    await off.set("a", sample_result())
    assert await off.get("a") is None


async def test_redis_hit_on_second_upload(svc_predictor_dir, redis_url):
    url, prefix = redis_url
    data = ckpt_bytes("cnn", unique_seed())
    settings = settings_for(svc_predictor_dir, redis_url=url, cache_prefix=prefix, cache_ttl_seconds=600)
    async with running_app(settings) as client:
        hits = metric_value("sne_cache_hits_total")
        first = (await client.post("/v1/encode", content=data)).json()
        second = (await client.post("/v1/encode", files={"file": ("x.safetensors", data)})).json()
        assert first["cached"] is False and second["cached"] is True
        assert metric_value("sne_cache_hits_total") == hits + 1
        for k in ("sha256", "embedding", "predicted_accuracy", "predicted_gap", "interval", "ood", "layers", "predictor"):
            assert second[k] == first[k], k
        ready = (await client.get("/readyz")).json()
        assert ready["cache"] == {"backend": "redis", "state": "up"}
    r = redis.Redis.from_url(url)
    key = cache_key(prefix, first["predictor"]["name"], first["predictor"]["version"], first["sha256"])
    assert 590 <= r.ttl(key) <= 600
    stored = r.get(key)
    assert stored[:4] == MAGIC and len(stored) < 4 * (64 + 4 * 32) + 1000  # float32 bytes, not JSON floats
    r.close()


async def test_hit_across_two_app_instances(svc_predictor_dir, redis_url):
    url, prefix = redis_url
    data = ckpt_bytes("mlp", unique_seed())
    settings = settings_for(svc_predictor_dir, redis_url=url, cache_prefix=prefix)
    async with running_app(settings) as a, running_app(settings) as b:
        assert a.app is not b.app
        ra = (await a.post("/v1/encode", content=data)).json()
        rb = (await b.post("/v1/encode", content=data, params={"layer_embeddings": "true"})).json()
        assert ra["cached"] is False and rb["cached"] is True
        assert rb["embedding"] == ra["embedding"] and rb["predicted_accuracy"] == ra["predicted_accuracy"]
        assert len(rb["layer_embeddings"]) == len(rb["layers"])  # layer embeddings are cached too
        assert b.app.state.worker.encoded == 0  # b never ran the encoder


async def test_redis_stopped_mid_test_keeps_answering(svc_predictor_dir, private_redis):
    settings = settings_for(
        svc_predictor_dir, redis_url=private_redis.url, cache_prefix="t:", redis_retry_seconds=0.3, redis_timeout_seconds=0.3
    )
    s = unique_seed()
    one, two, three = (ckpt_bytes("mlp", s + i) for i in range(3))
    async with running_app(settings) as client:
        assert (await client.post("/v1/encode", content=one)).json()["cached"] is False
        assert (await client.post("/v1/encode", content=one)).json()["cached"] is True

        private_redis.stop()
        errors = metric_value("sne_cache_errors_total")
        r = await client.post("/v1/encode", content=two)
        assert r.status_code == 200 and r.json()["cached"] is False
        assert metric_value("sne_cache_errors_total") > errors
        r = await client.post("/v1/encode", content=one)  # was cached, Redis is gone: computed again
        assert r.status_code == 200 and r.json()["cached"] is False
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert ready.json()["cache"]["state"] == "down"

        private_redis.start()  # same port, empty: the service reconnects after its backoff
        await asyncio.sleep(0.4)
        for _ in range(20):
            first = await client.post("/v1/encode", content=three)
            again = await client.post("/v1/encode", content=three)
            assert first.status_code == again.status_code == 200
            if again.json()["cached"]:
                break
            await asyncio.sleep(0.3)
        assert again.json()["cached"] is True
        assert (await client.get("/readyz")).json()["cache"]["state"] == "up"


async def test_redis_down_at_startup(svc_predictor_dir):
    from tests.conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = settings_for(svc_predictor_dir, redis_url=url, redis_timeout_seconds=0.2)
    async with running_app(settings) as client:
        errors = metric_value("sne_cache_errors_total")
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", unique_seed()))
        assert r.status_code == 200 and r.json()["cached"] is False
        assert metric_value("sne_cache_errors_total") == errors + 1  # then Redis is skipped during the backoff
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", unique_seed()))
        assert r.status_code == 200
        assert metric_value("sne_cache_errors_total") == errors + 1
        ready = (await client.get("/readyz")).json()
        assert ready["ready"] is True and ready["cache"]["backend"] == "redis" and ready["cache"]["state"] == "down"


async def test_redis_cache_unit_backoff():
    from tests.conftest import free_port

    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_seconds=10, timeout=0.2, retry_seconds=60)
    errors, misses = metric_value("sne_cache_errors_total"), metric_value("sne_cache_misses_total")
    assert await cache.get("k") is None
    await cache.set("k", sample_result())  # skipped: inside the backoff
    assert await cache.get("k") is None
    assert metric_value("sne_cache_errors_total") == errors + 1
    assert metric_value("sne_cache_misses_total") == misses + 2  # every lookup is a hit or a miss
    assert cache.down
    await cache.close()


def long_named(seed: int, layers: int = 200) -> Encoding:
    """A record whose layer table has long names: ~100x the bytes of `sample_result`'s."""
    base = sample_result(seed)
    rows = [LayerRow(f"model.{'very_long_module_name.' * 8}{i}.weight", "linear", i, [4, 4], 16, 1, 1) for i in range(layers)]
    prediction = Prediction(**{**base.prediction.__dict__, "layer_embeddings": np.zeros((layers, 32), np.float32)})
    return Encoding(sha256=base.sha256, prediction=prediction, layers=rows)


async def test_lru_is_bounded_by_bytes_not_entries():
    small, big = len(pack_encoding(sample_result(0))), len(pack_encoding(long_named(0)))
    assert big > 50 * small
    budget = 3 * big + big // 2
    lru = LRUCache(max_entries=1024, max_bytes=budget)
    for i in range(20):  # 20 long-named records into room for 3.5
        await lru.set(f"k{i}", long_named(i))
        assert lru.nbytes <= budget
    assert len(lru) == 3 and lru.nbytes == 3 * big
    assert [await lru.get(f"k{i}") is not None for i in (16, 17, 18, 19)] == [False, True, True, True]
    for i in range(200):  # small records fill the same budget by count of bytes, evicting the big ones
        await lru.set(f"s{i}", sample_result(i))
    assert len(lru) > 3 and lru.nbytes <= budget
    tiny = LRUCache(max_entries=1024, max_bytes=big - 1)  # a record bigger than the whole budget is not kept
    await tiny.set("x", long_named(1))
    assert len(tiny) == 0 and await tiny.get("x") is None
