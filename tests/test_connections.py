"""Connections and operations: what a misbehaving client costs the server, and what an operator sees.

Raw sockets against a real uvicorn (started with `app.server_config.uvicorn_options`, the options of
`sne serve`): a 401 or 413 closes the connection instead of draining a 10 GB body, a 1 byte/s upload is cut
with 408, `limit_concurrency` answers 503 past its connections. Through the ASGI app: request ids, the batch
route's multipart-only rule, `SNE_DOCS`, `/readyz` without error text, rejection and OOD metrics.
"""
from __future__ import annotations

import json
import logging
import logging.config
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from app.main import create_app
from app.observability import RequestIdFilter, log_config, request_id
from app.server_config import uvicorn_options
from tests.conftest import (
    ckpt_bytes,
    free_port,
    live_server,
    metric_value,
    running_app,
    settings_for,
    unique_seed,
)

pytestmark = pytest.mark.anyio
KEY = "k-connections"
TEN_GB = 10 * 1024**3
#: how long the server may take to close a refused connection (it closes at once; slack for a busy CI box)
PROMPT = 3.0


@contextmanager
def server(predictor_dir, **overrides) -> Iterator[tuple[str, int]]:
    settings = settings_for(predictor_dir, **overrides)
    options = uvicorn_options(settings, "127.0.0.1", 0)
    for k in ("host", "port", "log_config", "log_level"):
        options.pop(k)
    with live_server(create_app(settings), **options) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def open_upload(addr: tuple[str, int], length: int, headers: str = "", first: bytes = b"") -> socket.socket:
    s = socket.create_connection(addr, timeout=10)
    s.sendall(
        f"POST /v1/encode HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n{headers}\r\n".encode() + first
    )
    return s


def read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t0 = time.monotonic()
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):  # reset: closed with our bytes unread; timeout: still open
        pass
    return data, time.monotonic() - t0


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_401_and_413_close_the_connection_instead_of_draining(svc_predictor_dir) -> None:
    with server(svc_predictor_dir, api_keys=[KEY], max_upload_bytes=1024 * 1024) as addr:
        no_key = open_upload(addr, TEN_GB, first=b"\0" * 65536)
        response, took = read_until_closed(no_key, PROMPT + 2)
        assert status_of(response) == 401
        assert took < PROMPT, f"the server kept the connection {took:.1f} s"
        assert b"connection: close" in response.lower()

        too_big = open_upload(addr, TEN_GB, f"X-API-Key: {KEY}\r\n", b"\0" * 65536)
        response, took = read_until_closed(too_big, PROMPT + 2)
        assert status_of(response) == 413
        assert took < PROMPT
        assert b"connection: close" in response.lower()
        # the client that still "has" 10 GB to send is refused at the socket: nothing is read any more
        with pytest.raises(OSError):
            for _ in range(1000):
                too_big.sendall(b"\0" * 65536)
        no_key.close()
        too_big.close()


def test_slow_upload_is_cut_with_408(svc_predictor_dir) -> None:
    timeout = 1.0
    with server(svc_predictor_dir, body_timeout_seconds=timeout) as addr:
        s = open_upload(addr, 10_000)
        t0 = time.monotonic()
        s.settimeout(0.2)
        response = b""
        while time.monotonic() - t0 < timeout + PROMPT:  # 1 byte per 0.2 s, reading what comes back
            try:
                s.sendall(b"\0")
                response += s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if response.endswith(b"}"):
                break
        took = time.monotonic() - t0
        assert response, "no answer to a 1 byte / 0.2 s upload"
        assert status_of(response) == 408 and b'"body_timeout"' in response
        assert b"connection: close" in response.lower()
        assert timeout <= took < timeout + PROMPT
        s.close()


def test_connections_past_limit_concurrency_get_503(svc_predictor_dir) -> None:
    with server(svc_predictor_dir, limit_concurrency=3) as addr:
        idle = [socket.create_connection(addr, timeout=5) for _ in range(3)]
        time.sleep(0.2)  # let the server accept them (no event to wait on: accepting is the server's)
        probe = socket.create_connection(addr, timeout=5)
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        response, _ = read_until_closed(probe, PROMPT + 2)
        assert status_of(response) == 503
        for s in idle:
            s.close()


def test_uvicorn_options_carry_every_limit() -> None:
    s = settings_for(None, limit_concurrency=7, keep_alive_seconds=3, http_header_bytes=4096, backlog=99)
    o = uvicorn_options(s)
    assert (o["limit_concurrency"], o["timeout_keep_alive"], o["h11_max_incomplete_event_size"], o["backlog"]) == (
        7, 3, 4096, 99)
    assert o["http"] == "h11" and o["host"] == s.host and o["port"] == s.port


# ------------------------------------------------------------------------------------------ ASGI


async def test_request_id_generated_echoed_and_logged(svc_predictor_dir, caplog, monkeypatch) -> None:
    import app.parsing

    def unexpected(*args, **kwargs):  # a failure no bound foresaw, raised in the parse thread
        raise RuntimeError("something no limit foresaw")

    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.WARNING, logger="sne")
    async with running_app(settings_for(svc_predictor_dir)) as client:
        r = await client.get("/healthz")
        generated = r.headers["x-request-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0
        assert (await client.get("/healthz")).headers["x-request-id"] != generated
        r = await client.get("/healthz", headers={"X-Request-ID": "ci-run-42"})
        assert r.headers["x-request-id"] == "ci-run-42"
        r = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
        assert r.headers["x-request-id"] != "bad id\twith spaces" and len(r.headers["x-request-id"]) == 32
        # an unexpected failure while reading: the parse guard logs it (in the parse thread) and answers 422
        monkeypatch.setattr(app.parsing, "_parse", unexpected)  # the read, overlapped or not
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", unique_seed()), headers={"X-Request-ID": "nan-65"})
        assert r.status_code == 422 and r.json()["error"]["reason"] == "unparseable"
    lines = [rec for rec in caplog.records if rec.name.startswith("sne") and "could not be parsed" in rec.getMessage()]
    assert lines and all(rec.request_id == "nan-65" for rec in lines)
    assert request_id.get() == "-"  # nothing leaks out of the request


def test_json_log_lines_carry_the_request_id() -> None:
    config = log_config("json")
    formatter = logging.config.DictConfigurator(config).configure_formatter(config["formatters"]["default"])
    record = logging.LogRecord("sne.service", logging.WARNING, __file__, 1, "queue %d full", (3,), None)
    record.request_id = "abc123"
    line = json.loads(formatter.format(record))
    assert line["message"] == "queue 3 full" and line["request_id"] == "abc123"
    assert line["level"] == "WARNING" and line["logger"] == "sne.service" and "time" in line


async def test_batch_route_takes_multipart_only(svc_predictor_dir) -> None:
    before = metric_value("sne_rejections_total", status="415", reason="multipart_required")
    async with running_app(settings_for(svc_predictor_dir)) as client:
        r = await client.post("/v1/encode/batch", content=b"", headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 415 and r.json()["error"]["reason"] == "multipart_required"
        r = await client.post("/v1/encode/batch", content=ckpt_bytes("mlp", 3))
        assert r.status_code == 415
        r = await client.post("/v1/encode/batch", files=[("files", ("a.safetensors", ckpt_bytes("mlp", 3)))])
        assert r.status_code == 200 and r.json()["results"][0]["status"] == 200
    assert metric_value("sne_rejections_total", status="415", reason="multipart_required") == before + 2


@pytest.mark.parametrize("docs", [True, False])
async def test_docs_switch(svc_predictor_dir, docs: bool) -> None:
    async with running_app(settings_for(svc_predictor_dir, docs=docs)) as client:
        for path in ("/docs", "/openapi.json"):
            assert (await client.get(path)).status_code == (200 if docs else 404), path
        assert (await client.get("/redoc")).status_code == 404  # never served (C: no offline ReDoc)
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/")).status_code == 200


async def test_readyz_reports_a_down_redis_without_its_error_text(svc_predictor_dir) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with running_app(settings_for(svc_predictor_dir, redis_url=url, redis_timeout_seconds=0.2)) as client:
        r = await client.get("/readyz")
        body = r.json()
        assert body["cache"] == {"backend": "redis", "state": "down"}
        assert "Error" not in r.text and "refused" not in r.text.lower()


async def test_ood_flags_are_counted(svc_predictor_dir) -> None:
    before = metric_value("sne_ood_flags_total")
    async with running_app(settings_for(svc_predictor_dir)) as client:
        flags = []
        for blob in (ckpt_bytes("mlp", 11), ckpt_bytes("mlp", 11), ckpt_bytes("cnn", 12)):  # the 2nd is a cache hit
            r = await client.post("/v1/encode", content=blob)
            assert r.status_code == 200
            flags.append(r.json()["ood"]["flag"])
    assert any(flags), "fixture MLPs score ~1.0 against a CNN reference (threshold 0.5)"
    assert metric_value("sne_ood_flags_total") == before + sum(flags)
