"""Every error case: 415/422 with the parser's message, 413 while streaming, 401, 503, and never a 500."""
from __future__ import annotations

import asyncio
import io
import math
import pickle
import random
import struct

import httpx
import pytest
import torch
from safetensors.torch import save

from model.checkpoint import load_checkpoint
from tests.conftest import (
    ckpt_bytes,
    live_server,
    metric_value,
    running_app,
    settings_for,
    unique_seed,
)

pytestmark = pytest.mark.anyio


def pickled() -> bytes:
    return pickle.dumps({"weight": [1.0, 2.0]}, protocol=4)


def zipped() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)  # torch.save's default: a zip holding a pickle
    return buf.getvalue()


def with_header(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


BAD_INPUTS = {
    # name: (bytes, status, reason)
    "pickle": (pickled(), 415, "pickle"),
    "zip": (zipped(), 415, "zip"),
    "text": (b"this is certainly not a checkpoint, just some text", 415, "not_safetensors"),
    "empty": (b"", 415, "not_safetensors"),
    "truncated": (ckpt_bytes("cnn", 1)[:-100], 422, "truncated"),
    "bad_json": (with_header(b"{not json at all}"), 422, "bad_header"),
    "bad_offsets": (with_header(b'{"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}', b"\0" * 8), 422, "bad_offsets"),
    "nan": (save({"0.weight": torch.tensor([[float("nan"), 1.0]]), "0.bias": torch.zeros(1)}), 422, "non_finite"),
    "ints_only": (save({"steps": torch.tensor([3])}), 422, "no_layers"),
    "fp8": (save({"0.weight": torch.zeros(2, 2, dtype=torch.float8_e4m3fn)}), 422, "unsupported_dtype"),
}


@pytest.fixture
async def client(svc_predictor_dir):
    async with running_app(settings_for(svc_predictor_dir)) as c:
        yield c


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
async def test_bad_checkpoints(client, name):
    data, status, reason = BAD_INPUTS[name]
    before = metric_value("sne_parse_failures_total", reason=reason)
    for send in ("raw", "multipart"):
        if send == "raw":
            r = await client.post("/v1/encode", content=data, headers={"Content-Type": "application/octet-stream"})
        else:
            r = await client.post("/v1/encode", files={"file": (f"{name}.bin", data)})
        assert r.status_code == status, (send, r.text)
        err = r.json()["error"]
        assert err["reason"] == reason and len(err["message"]) > 10
        if name in ("truncated", "bad_json", "nan", "ints_only", "fp8"):  # the parser's own message is passed on
            with pytest.raises(Exception) as parser:
                load_checkpoint(data)
            assert err["message"] == str(parser.value)
    assert metric_value("sne_parse_failures_total", reason=reason) == before + 2


async def test_extreme_weights_encode_at_unit_scale_beside_their_batch(svc_predictor_dir, svc_predictor):
    """1e30 weights used to overflow the encoder (422 non_finite_output); values now arrive divided by their
    part's std, with the scale in the log-statistics, so they encode like any other checkpoint."""
    extreme = save({"0.weight": torch.full((4, 8), 1e30), "0.bias": torch.full((4,), -1e30)})
    good = ckpt_bytes("mlp", unique_seed())
    async with running_app(settings_for(svc_predictor_dir, max_wait_ms=200)) as client:
        bad_r, good_r = await asyncio.gather(client.post("/v1/encode", content=extreme), client.post("/v1/encode", content=good))
        assert client.app.state.worker.batches == 1  # same forward
    assert bad_r.status_code == 200, bad_r.text
    assert all(math.isfinite(x) for x in bad_r.json()["embedding"])
    assert good_r.status_code == 200
    (want,) = svc_predictor.predict([load_checkpoint(good)])
    assert good_r.json()["embedding"] == pytest.approx(want.embedding, abs=1e-5)


async def test_chunk_budget_samples_and_says_so(svc_predictor_dir):
    """Over SNE_LAYER_CHUNK_BUDGET a layer is encoded from a sample (same file, same sample); the response says so."""
    async with running_app(settings_for(svc_predictor_dir, layer_chunk_budget=100)) as client:
        blob = ckpt_bytes("cnn", 2)
        r = await client.post("/v1/encode", content=blob)  # its 16x16x3x3 convs have 257 chunks (kernels + bias)
        assert r.status_code == 200, r.text
        rows = {row["name"]: row for row in r.json()["layers"]}
        assert rows["2"]["chunks"] == 257 and rows["2"]["chunks_sampled"] == 100
        assert all(row["chunks_sampled"] == min(row["chunks"], 100) for row in rows.values())
    async with running_app(settings_for(svc_predictor_dir, layer_chunk_budget=100)) as client:  # fresh cache
        again = await client.post("/v1/encode", content=blob)
        assert again.json()["cached"] is False and again.json()["embedding"] == r.json()["embedding"]


async def test_header_limits_refuse_before_work_and_name_the_setting(svc_predictor_dir):
    async with running_app(settings_for(svc_predictor_dir, max_tensors=3, max_params=1000)) as client:
        r = await client.post("/v1/encode", content=ckpt_bytes("cnn", 2))
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["reason"] == "too_many_tensors" and "SNE_MAX_TENSORS" in err["message"]
        big = save({"w": torch.zeros(2000)})
        r = await client.post("/v1/encode", content=big)
        assert r.status_code == 422 and r.json()["error"]["reason"] == "too_many_params"
        assert "SNE_MAX_PARAMS" in r.json()["error"]["message"]
        dims = with_header(b'{"w": {"dtype": "F32", "shape": [' + b", ".join([b"1"] * 100_000) + b'], "data_offsets": [0, 4]}}', bytes(4))
        r = await client.post("/v1/encode", content=dims)
        assert r.status_code == 422 and r.json()["error"]["reason"] == "too_many_dims"


async def test_multipart_problems(client):
    r = await client.post("/v1/encode", data={"note": "no file here"}, files={"other": ("", b"")})
    assert r.status_code == 422 and r.json()["error"]["reason"] == "missing_file"
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n" + ckpt_bytes("mlp", 1)
    r = await client.post("/v1/encode", content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "bad_multipart"  # never closed
    r = await client.post("/v1/encode", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "bad_multipart"
    two = [("file", ("a", ckpt_bytes("mlp", 1))), ("file", ("b", ckpt_bytes("mlp", 2)))]
    r = await client.post("/v1/encode", files=two)
    assert r.status_code == 413 and r.json()["error"]["reason"] == "too_many_files"
    assert "/v1/encode/batch" in r.json()["error"]["message"]


class Endless:
    """An async body of `total` bytes made on the fly (nothing that big ever exists), counting what was sent."""

    def __init__(self, total: int, chunk: int = 1 << 20, prefix: bytes = b"") -> None:
        self.total, self.chunk, self.prefix, self.sent = total, chunk, prefix, 0

    async def __aiter__(self):
        block = b"\0" * self.chunk
        if self.prefix:
            self.sent += len(self.prefix)
            yield self.prefix
        while self.sent < self.total:
            self.sent += self.chunk
            yield block


async def test_413_by_content_length_reads_nothing(svc_predictor_dir):
    limit = 100_000
    async with running_app(settings_for(svc_predictor_dir, max_upload_bytes=limit)) as client:
        body = Endless(10 * 1024**3)
        r = await client.post("/v1/encode", content=body, headers={"Content-Length": str(10 * 1024**3)})
        assert r.status_code == 413 and r.json()["error"]["reason"] == "too_large"
        assert body.sent <= 1 << 20  # at most the first chunk was ever produced
        assert r.headers.get("connection") == "close"


@pytest.mark.parametrize("kind", ["raw", "multipart"])
async def test_413_while_streaming_a_10gb_upload(svc_predictor_dir, kind):
    """No Content-Length (chunked): the body is counted as it arrives and cut off past the limit."""
    limit = 2 * 1024 * 1024
    async with running_app(settings_for(svc_predictor_dir, max_upload_bytes=limit)) as client:
        before = metric_value("sne_parse_failures_total", reason="too_large")
        if kind == "raw":
            body = Endless(10 * 1024**3)
            headers = {"Content-Type": "application/octet-stream"}
        else:
            head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="huge.safetensors"\r\n\r\n'
            body = Endless(10 * 1024**3, prefix=head)
            headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
        r = await client.post("/v1/encode", content=body, headers=headers)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["reason"] == "too_large"
        assert body.sent <= limit + 2 * (1 << 20)  # stopped right after the limit, not 10 GB later
        assert r.headers.get("connection") == "close"
        assert metric_value("sne_parse_failures_total", reason="too_large") == before + 1
        # a file just under the limit still works
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 1))
        assert r.status_code == 200


async def test_413_over_real_http(svc_predictor_dir):
    """Through uvicorn: a chunked 10 GB stream is refused after about the limit, the client gets the 413."""
    from app.main import create_app

    limit = 1_000_000
    app = create_app(settings_for(svc_predictor_dir, max_upload_bytes=limit))
    sent = 0

    def gen():
        nonlocal sent
        block = b"\0" * (1 << 20)
        for _ in range(10 * 1024):
            sent += len(block)
            yield block

    with live_server(app) as url:
        try:
            r = httpx.post(url + "/v1/encode", content=gen(), timeout=60)
            assert r.status_code == 413 and r.json()["error"]["reason"] == "too_large"
        except httpx.TransportError:
            pass  # the server closed the connection while the client was still writing: also a refusal
        assert sent < 64 * (1 << 20)
        r = httpx.post(url + "/v1/encode", content=b"x" * (limit + 1), timeout=60)
        assert r.status_code == 413
        assert httpx.get(url + "/healthz").status_code == 200


async def test_batch_limits(svc_predictor_dir):
    async with running_app(settings_for(svc_predictor_dir, max_batch_files=2, max_upload_bytes=50_000)) as client:
        files = [("files", (f"{i}", ckpt_bytes("mlp", i))) for i in range(3)]
        r = await client.post("/v1/encode/batch", files=files)
        assert r.status_code == 413 and r.json()["error"]["reason"] == "too_many_files"
        big = [("files", ("big", b"\0" * 60_000))]
        r = await client.post("/v1/encode/batch", files=big)
        assert r.status_code == 413 and "'big'" in r.json()["error"]["message"]


async def test_api_keys(svc_predictor_dir):
    data = ckpt_bytes("mlp", 7)
    async with running_app(settings_for(svc_predictor_dir, api_keys=["k1", "k2"])) as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
            for method, path in (("POST", "/v1/encode"), ("POST", "/v1/encode/batch"), ("GET", "/v1/predictor")):
                r = await client.request(method, path, content=data if method == "POST" else None, headers=headers)
                assert r.status_code == 401, (headers, path)
                assert r.json()["error"]["reason"] == "unauthorized"
        assert (await client.post("/v1/encode", content=data, headers={"X-API-Key": "k2"})).status_code == 200
        assert (await client.get("/v1/predictor", headers={"X-API-Key": "k1"})).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes need no key
            assert (await client.get(open_path)).status_code == 200


async def test_unauthorized_upload_is_not_read(svc_predictor_dir):
    async with running_app(settings_for(svc_predictor_dir, api_keys=["k"])) as client:
        body = Endless(10 * 1024**3)
        r = await client.post("/v1/encode", content=body)
        assert r.status_code == 401 and body.sent <= 1 << 20


async def test_queue_full_is_503_with_retry_after(svc_predictor_dir):
    settings = settings_for(svc_predictor_dir, queue_limit=2, max_batch_size=64, max_wait_ms=1500, retry_after_seconds=3)
    s = unique_seed()
    async with running_app(settings) as client:
        first = [asyncio.create_task(client.post("/v1/encode", content=ckpt_bytes("mlp", s + i))) for i in range(2)]
        worker = client.app.state.worker
        for _ in range(200):
            if worker.depth == 2:
                break
            await asyncio.sleep(0.01)
        assert worker.depth == 2
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", s + 2))
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "3" and r.json()["error"]["reason"] == "queue_full"
        assert [t.status_code for t in await asyncio.gather(*first)] == [200, 200]


async def test_unknown_routes_and_methods_use_the_error_shape(client):
    r = await client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["reason"] == "not_found"
    r = await client.get("/v1/encode")
    assert r.status_code == 405 and r.json()["error"]["reason"] == "method_not_allowed"
    r = await client.post("/v1/encode?layer_embeddings=maybe", content=b"")
    assert r.status_code == 422 and r.json()["error"]["reason"] == "invalid_request"


async def test_fuzzed_uploads_never_500(client):
    """Random corruptions of a real checkpoint: always a 200 or a 4xx with the error shape."""
    rng = random.Random(1234)
    base = ckpt_bytes("mlp", 11)
    (n,) = struct.unpack("<Q", base[:8])
    cases = []
    for _ in range(30):
        b = bytearray(base)
        what = rng.random()
        if what < 0.4:  # flip bytes in the JSON header
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(8, 8 + n)
                b[i] = rng.randrange(256)
        elif what < 0.6:  # a wrong header length
            b[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, len(base), 2**63]))
        elif what < 0.8:  # random cut
            b = b[: rng.randrange(len(b))]
        else:  # random bytes
            b = bytearray(rng.randbytes(rng.randrange(1, 2000)))
        cases.append(bytes(b))
    results = await asyncio.gather(*(client.post("/v1/encode", content=c) for c in cases))
    for r in results:
        assert r.status_code in (200, 415, 422), r.text
        if r.status_code != 200:
            assert set(r.json()["error"]) == {"reason", "message"}
