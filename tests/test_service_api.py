"""The HTTP API: uploads by multipart and raw body, the response shape, equality with the encoder called
directly, the batch route, the predictor card, health/readiness and OpenAPI."""
from __future__ import annotations

import hashlib
import json

import pytest

from model.admission import Limits
from model.checkpoint import load_checkpoint
from model.predictor import Predictor
from tests.conftest import (
    FIXTURE_Q,
    ckpt_bytes,
    running_app,
    settings_for,
    unique_seed,
)

pytestmark = pytest.mark.anyio

TOL = 1e-5


def assert_matches(body: dict, pred, predictor: Predictor, with_layers: bool = False) -> None:
    """A response equals `Predictor.predict` of the same file (floats within 1e-5)."""
    assert body["embedding"] == pytest.approx(pred.embedding, abs=TOL)
    assert body["predicted_accuracy"] == pytest.approx(pred.accuracy, abs=TOL)
    assert body["interval"]["low"] == pytest.approx(pred.low, abs=TOL)
    assert body["interval"]["high"] == pytest.approx(pred.high, abs=TOL)
    assert body["interval"]["coverage"] == pred.coverage
    if pred.gap is None:
        assert body["predicted_gap"] is None
    else:
        assert body["predicted_gap"] == pytest.approx(pred.gap, abs=TOL)
    if pred.ood_score is None:
        assert body["ood"]["score"] is None
    else:
        assert body["ood"]["score"] == pytest.approx(pred.ood_score, abs=1e-4)
    assert body["ood"]["flag"] == pred.ood_flag
    assert body["ood"]["threshold"] == predictor.card.ood.threshold
    assert body["predictor"] == {"name": predictor.name, "version": predictor.version, "trained": predictor.trained}
    if with_layers:
        assert len(body["layer_embeddings"]) == len(pred.layer_embeddings)
        for got, want in zip(body["layer_embeddings"], pred.layer_embeddings):
            assert got == pytest.approx(want, abs=TOL)
    else:
        assert "layer_embeddings" not in body


async def test_raw_and_multipart_uploads(svc_predictor_dir, svc_predictor):
    data = ckpt_bytes("cnn", unique_seed())
    sha = hashlib.sha256(data).hexdigest()
    (want,) = svc_predictor.predict([load_checkpoint(data)])
    async with running_app(settings_for(svc_predictor_dir)) as client:
        raw = await client.post("/v1/encode", content=data, headers={"Content-Type": "application/octet-stream"})
        assert raw.status_code == 200, raw.text
        body = raw.json()
        assert body["sha256"] == sha and body["cached"] is False
        assert body["warning"] is None and body["predictor"]["trained"] is True
        assert_matches(body, want, svc_predictor)
        # the calibrated interval of the card: prediction ± q, clipped to [0, 1], 90% coverage
        assert body["interval"]["coverage"] == pytest.approx(0.9)
        assert body["interval"]["low"] == pytest.approx(max(0.0, want.accuracy - FIXTURE_Q), abs=TOL)
        assert body["predicted_gap"] is not None  # the card says the gap head is trained
        assert set(body["timings"]) == {"parse_ms", "queue_ms", "encode_ms", "total_ms"}
        assert body["timings"]["encode_ms"] > 0 and body["timings"]["total_ms"] >= body["timings"]["encode_ms"]

        # the layer table agrees with the parser
        ckpt = load_checkpoint(data)
        assert [(l["name"], l["type"], l["level"], l["shape"], l["parameters"]) for l in body["layers"]] == [
            (l.name, l.kind.value, l.level, l.shape, l.n_params) for l in ckpt.layers
        ]
        assert [l["chunks"] for l in body["layers"]] == [17, 257, 257, 11]  # 3x3 kernels, chunk size 16

        # multipart, same bytes: a cache hit with the same numbers, layer embeddings on request
        multi = await client.post(
            "/v1/encode", params={"layer_embeddings": "true"}, files={"file": ("net.safetensors", data)}
        )
        assert multi.status_code == 200, multi.text
        hit = multi.json()
        assert hit["cached"] is True and hit["sha256"] == sha
        assert hit["timings"]["encode_ms"] == 0 and hit["timings"]["parse_ms"] == 0
        assert_matches(hit, want, svc_predictor, with_layers=True)
        assert hit["layers"] == body["layers"]


async def test_multipart_first_upload_matches_encoder(svc_predictor_dir, svc_predictor):
    data = ckpt_bytes("mlp", unique_seed())
    (want,) = svc_predictor.predict([load_checkpoint(data)])
    async with running_app(settings_for(svc_predictor_dir)) as client:
        r = await client.post("/v1/encode?layer_embeddings=1", files={"file": ("mlp.safetensors", data, "application/octet-stream")})
        assert r.status_code == 200, r.text
        assert r.json()["cached"] is False
        assert_matches(r.json(), want, svc_predictor, with_layers=True)


async def test_untrained_predictor_is_labelled(untrained_dir):
    data = ckpt_bytes("cnn", 3)
    async with running_app(settings_for(untrained_dir)) as client:
        body = (await client.post("/v1/encode", content=data)).json()
        assert body["predictor"]["trained"] is False
        assert "UNTRAINED" in body["warning"]
        assert body["interval"]["coverage"] is None and (body["interval"]["low"], body["interval"]["high"]) == (0, 1)
        assert body["ood"] == {"score": None, "flag": False, "unseen_architecture": False, "threshold": None}
        card = (await client.get("/v1/predictor")).json()
        assert card["trained"] is False and card["name"] == body["predictor"]["name"]


async def test_default_predictor_path():
    """With no SNE_PREDICTOR_PATH: the shipped default, or the labelled untrained one when none ships."""
    expected = Predictor.load(None)
    async with running_app(settings_for(None)) as client:
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 5))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["predictor"] == {"name": expected.name, "version": expected.version, "trained": expected.trained}
        assert (body["warning"] is None) == expected.trained
        assert len(body["embedding"]) == expected.config.embedding_size


async def test_predictor_card(svc_predictor_dir, svc_predictor):
    async with running_app(settings_for(svc_predictor_dir)) as client:
        card = (await client.get("/v1/predictor")).json()
    expected = svc_predictor.card.model_dump(mode="json")
    defaults = Limits()  # the card shows the chunk budgets the service encodes under: the settings' defaults here
    expected["budgets"].update(layer_chunk_budget=defaults.layer_chunk_budget,
                               checkpoint_chunk_budget=defaults.checkpoint_chunk_budget)
    assert card == expected
    assert card["metrics"]["kendall_tau"]["test"]["sne"] == 0.5
    assert card["config"]["chunk_size"] == 16 and card["zoo"]["name"] == "fixture"


async def test_batch_route(svc_predictor_dir, svc_predictor):
    s = unique_seed()
    good = [ckpt_bytes("cnn", s), ckpt_bytes("mlp", s + 1)]
    files = [
        ("files", ("a.safetensors", good[0])),
        ("files", ("b.safetensors", good[1])),
        ("files", ("c.pt", b"\x80\x04\x95 a pickle")),
        ("files", ("a-again.safetensors", good[0])),
    ]
    want = svc_predictor.predict([load_checkpoint(b) for b in good])
    async with running_app(settings_for(svc_predictor_dir, max_wait_ms=50)) as client:
        r = await client.post("/v1/encode/batch", files=files, params={"layer_embeddings": "true"})
        assert r.status_code == 200, r.text
        items = r.json()["results"]
        assert [(i["filename"], i["status"]) for i in items] == [
            ("a.safetensors", 200), ("b.safetensors", 200), ("c.pt", 415), ("a-again.safetensors", 200)
        ]
        assert items[2]["error"]["reason"] == "pickle" and items[2]["result"] is None
        for item, pred in zip([items[0], items[1], items[3]], [want[0], want[1], want[0]]):
            assert_matches(item["result"], pred, svc_predictor, with_layers=True)
        assert items[0]["result"]["sha256"] == items[3]["result"]["sha256"]
        # the two good files went through one forward
        assert client.app.state.worker.batches == 1


async def test_health_readiness_openapi(svc_predictor_dir):
    from app.main import create_app

    app = create_app(settings_for(svc_predictor_dir))
    async with running_app(None, app=app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["ready"] is True and body["predictor"]["name"] == "svc-fixture"
        assert body["worker"]["running"] is True and body["worker"]["device"] == "cpu"
        assert body["cache"] == {"backend": "lru", "state": "in-process"}

        spec = (await client.get("/openapi.json")).json()
        encode = spec["paths"]["/v1/encode"]["post"]
        assert set(encode["requestBody"]["content"]) == {"application/octet-stream", "multipart/form-data"}
        assert {"200", "401", "413", "415", "422", "503"} <= set(encode["responses"])
        assert "/v1/encode/batch" in spec["paths"] and "/v1/predictor" in spec["paths"]
        schemas = spec["components"]["schemas"]
        assert schemas["EncodeResponse"]["examples"]
        # every error status shows its own example, with a reason that belongs to that status
        want = {"401": "unauthorized", "413": "too_large", "415": "pickle", "422": "truncated", "503": "queue_full"}
        got = {s: encode["responses"][s]["content"]["application/json"]["example"]["error"]["reason"] for s in want}
        assert got == want
        batch = spec["paths"]["/v1/encode/batch"]["post"]["responses"]
        assert batch["422"]["content"]["application/json"]["example"]["error"]["reason"] == "invalid_request"
        assert "HTTPValidationError" not in json.dumps(spec)
        assert {"sha256", "predictor", "embedding", "predicted_accuracy", "predicted_gap", "interval", "ood",
                "layers", "layer_embeddings", "cached", "timings", "warning"} <= set(schemas["EncodeResponse"]["properties"])
    # after shutdown: not ready, and encode refuses cleanly (no 500)
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sne.test") as client:
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 1))
        assert r.status_code == 503 and r.json()["error"]["reason"] == "not_ready"


async def test_large_uploads_spool_to_disk_and_are_removed(svc_predictor_dir, svc_predictor, tmp_path):
    """Past `spool_bytes` an upload streams to a temp file in `upload_dir`; every such file is gone after."""
    from app import spool

    data = ckpt_bytes("cnn", unique_seed())  # ~20 kB, spooled past 1 kB
    seen = []
    real_mkstemp = spool.tempfile.mkstemp

    def spy(*a, **kw):
        fd, name = real_mkstemp(*a, **kw)
        seen.append(name)
        return fd, name

    settings = settings_for(svc_predictor_dir, spool_bytes=1024, upload_dir=tmp_path, max_upload_bytes=len(data) + 10)
    async with running_app(settings) as client:
        spool.tempfile.mkstemp = spy
        try:
            r = await client.post("/v1/encode", content=data)
            assert r.status_code == 200
            (want,) = svc_predictor.predict([load_checkpoint(data)])
            assert r.json()["embedding"] == pytest.approx(want.embedding, abs=1e-5)
            r = await client.post("/v1/encode", files={"file": ("x", data[:-50])})  # spooled, then refused
            assert r.status_code == 422
            async def chunked():  # no Content-Length: spooled, then cut off past the limit
                yield data
                yield b"\0" * 100

            r = await client.post("/v1/encode", content=chunked())
            assert r.status_code == 413
        finally:
            spool.tempfile.mkstemp = real_mkstemp
    assert len(seen) == 3 and all(str(p).startswith(str(tmp_path)) for p in seen)
    assert list(tmp_path.iterdir()) == []
