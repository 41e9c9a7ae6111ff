"""Real responses of the running app validate against the app's own OpenAPI schema (status by status), and
every reason a response can carry is one the schema's `Reason` enum lists."""
from __future__ import annotations

import ast
import pathlib

import httpx
import jsonschema
import pytest

from app.errors import Reason
from app.main import create_app
from tests.conftest import ckpt_bytes, running_app, settings_for, unique_seed
from tests.test_service_errors import BAD_INPUTS

pytestmark = pytest.mark.anyio

ROOT = pathlib.Path(__file__).resolve().parents[1]


def check(openapi: dict, method: str, path: str, r: httpx.Response) -> dict:
    """Validate `r` against the schema the OpenAPI document gives for (path, method, r.status_code)."""
    responses = openapi["paths"][path][method]["responses"]
    assert str(r.status_code) in responses, f"{method.upper()} {path} answered {r.status_code}, not documented"
    schema = responses[str(r.status_code)]["content"]["application/json"]["schema"]
    body = r.json()
    jsonschema.validate(body, {**schema, "components": openapi["components"]},
                        cls=jsonschema.Draft202012Validator)
    return body


async def test_success_bodies_match_the_schema(svc_predictor_dir):
    data = ckpt_bytes("cnn", unique_seed())
    async with running_app(settings_for(svc_predictor_dir)) as client:
        openapi = client.app.openapi()
        body = check(openapi, "post", "/v1/encode", await client.post("/v1/encode", content=data))
        assert body["cached"] is False and "layer_embeddings" not in body
        body = check(openapi, "post", "/v1/encode",
                     await client.post("/v1/encode?layer_embeddings=true", content=data))
        assert body["cached"] is True and len(body["layer_embeddings"]) == len(body["layers"])
        files = [("files", ("good.safetensors", data)), ("files", ("bad.pt", BAD_INPUTS["pickle"][0]))]
        body = check(openapi, "post", "/v1/encode/batch", await client.post("/v1/encode/batch", files=files))
        assert [i["status"] for i in body["results"]] == [200, 415]
        assert body["results"][1]["error"]["reason"] == "pickle"
        card = check(openapi, "get", "/v1/predictor", await client.get("/v1/predictor"))
        assert card["name"] == "svc-fixture"
        assert check(openapi, "get", "/readyz", await client.get("/readyz"))["ready"] is True
        assert check(openapi, "get", "/healthz", await client.get("/healthz")) == {"status": "ok"}


@pytest.mark.parametrize("case", ["pickle", "zip", "truncated", "bad_offsets", "nan", "ints_only", "fp8"])
async def test_checkpoint_errors_match_the_schema(svc_predictor_dir, case):
    data, status, reason = BAD_INPUTS[case]
    async with running_app(settings_for(svc_predictor_dir)) as client:
        r = await client.post("/v1/encode", content=data)
        assert r.status_code == status
        assert check(client.app.openapi(), "post", "/v1/encode", r)["error"]["reason"] == reason


async def test_request_errors_match_the_schema(svc_predictor_dir):
    async with running_app(settings_for(svc_predictor_dir, api_keys=["k"], max_upload_bytes=1000)) as client:
        openapi = client.app.openapi()
        r = await client.post("/v1/encode", content=b"x")
        assert r.status_code == 401 and check(openapi, "post", "/v1/encode", r)["error"]["reason"] == "unauthorized"
        r = await client.get("/v1/predictor")
        assert r.status_code == 401 and check(openapi, "get", "/v1/predictor", r)["error"]["reason"] == "unauthorized"
        big = await client.post("/v1/encode", content=b"\0" * 5000, headers={"X-API-Key": "k"})
        assert big.status_code == 413 and check(openapi, "post", "/v1/encode", big)["error"]["reason"] == "too_large"
        r = await client.post("/v1/encode", content=b"x", headers={"X-API-Key": "k", "Content-Type": "multipart/form-data"})
        assert r.status_code == 400 and check(openapi, "post", "/v1/encode", r)["error"]["reason"] == "bad_multipart"
        bad_q = await client.post("/v1/encode/batch?layer_embeddings=maybe", headers={"X-API-Key": "k"},
                                  files=[("files", ("a.safetensors", b"x"))])
        assert bad_q.status_code == 422
        assert check(openapi, "post", "/v1/encode/batch", bad_q)["error"]["reason"] == "invalid_request"


async def test_not_ready_503_matches_the_schema(svc_predictor_dir):
    """Before the lifespan has loaded the predictor, uploads and readiness answer 503 in the documented shapes."""
    app = create_app(settings_for(svc_predictor_dir))
    openapi = app.openapi()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sne.test") as client:
        r = await client.post("/v1/encode", content=ckpt_bytes("mlp", 0))
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert check(openapi, "post", "/v1/encode", r)["error"]["reason"] == "not_ready"
        r = await client.get("/readyz")
        assert r.status_code == 503 and check(openapi, "get", "/readyz", r)["ready"] is False


def _raised_reasons() -> set[str]:
    """Every literal reason passed to CheckpointError(...) or APIError(status, ...) in app/ and model/."""
    found: set[str] = set()
    for path in [*ROOT.glob("app/**/*.py"), *ROOT.glob("model/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            where = {"CheckpointError": 0, "APIError": 1}.get(name or "")
            if where is None or len(node.args) <= where:
                continue
            arg = node.args[where]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def test_every_raised_reason_is_in_the_enum():
    raised = _raised_reasons()
    assert {"pickle", "truncated", "too_large", "bad_multipart"} <= raised  # the scan sees the real call sites
    assert raised <= {r.value for r in Reason}, raised - {r.value for r in Reason}


def test_openapi_lists_the_reasons_and_no_fastapi_validation_shape():
    openapi = create_app(settings_for(None)).openapi()
    assert set(openapi["components"]["schemas"]["Reason"]["enum"]) == {r.value for r in Reason}
    assert "HTTPValidationError" not in openapi["components"]["schemas"]
