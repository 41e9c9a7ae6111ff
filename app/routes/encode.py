"""`POST /v1/encode` and `POST /v1/encode/batch`: checkpoints in, embeddings and predicted accuracy out."""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from app.auth import require_api_key
from app.deps import get_app_settings, get_service
from app.errors import APIError, error_body
from app.metrics import PARSE_FAILURES
from app.schemas import UPLOAD_ERRORS, BatchResponse, EncodeResponse
from app.service import Answer, EncodeService
from app.settings import Settings
from app.uploads import Upload, is_multipart, read_multipart, read_raw
from model.predictor import Predictor

router = APIRouter(prefix="/v1", tags=["encode"], dependencies=[Depends(require_api_key)])

_BINARY = {"type": "string", "format": "binary"}
ENCODE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One `.safetensors` checkpoint: the raw bytes as the body, or a multipart part named `file`.",
        "content": {
            "application/octet-stream": {"schema": _BINARY},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}
            },
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Several `.safetensors` checkpoints as multipart file parts (named `files`, or any part "
        "with a filename), at most SNE_MAX_BATCH_FILES.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _BINARY}},
                    "required": ["files"],
                }
            }
        },
    }
}
LAYER_EMBEDDINGS = Query(False, description="Also return one embedding per layer (`layer_embeddings`).")


def predictor_warning(predictor: Predictor) -> str | None:
    if predictor.trained:
        return None
    return (
        f"predictor {predictor.name} ({predictor.version}) is UNTRAINED: random weights, so the predicted accuracy, "
        "its interval and the OOD score carry no information. Serve a trained predictor (SNE_PREDICTOR_PATH)."
    )


def encode_payload(answer: Answer, predictor: Predictor, with_layers: bool, started: float) -> dict:
    """The `EncodeResponse` JSON (built directly: no re-validation of thousands of floats per request)."""
    r = answer.result
    payload = {
        "sha256": answer.sha256,
        "predictor": {"name": predictor.name, "version": predictor.version, "trained": predictor.trained},
        "embedding": r.embedding.tolist(),
        "predicted_accuracy": r.accuracy,
        "predicted_gap": r.gap,
        "interval": {"low": r.low, "high": r.high, "coverage": r.coverage},
        "ood": {"score": r.ood_score, "flag": r.ood_flag, "threshold": (predictor.card.get("ood") or {}).get("threshold")},
        "layers": [row.as_dict() for row in r.layers],
        "skipped": r.skipped,
        "cached": answer.cached,
        "warning": predictor_warning(predictor),
        "timings": {
            "parse_ms": round(answer.parse_ms, 3),
            "queue_ms": round(answer.queue_ms, 3),
            "encode_ms": round(answer.encode_ms, 3),
            "total_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    }
    if with_layers:
        payload["layer_embeddings"] = r.layer_embeddings.tolist()
    return payload


async def receive_uploads(request: Request, settings: Settings, max_files: int) -> list[Upload]:
    """The uploaded file(s), streamed with the size limits; rejected uploads are counted by reason."""
    try:
        if is_multipart(request):
            uploads = await read_multipart(
                request,
                max_file_bytes=settings.max_upload_bytes,
                max_files=max_files,
                spool_bytes=settings.spool_bytes,
                upload_dir=settings.upload_dir,
            )
            if not uploads:
                raise APIError(
                    422, "missing_file",
                    "no file in the multipart body: send the checkpoint as a file part named `file` "
                    "(or as the raw body with Content-Type: application/octet-stream)",
                )
        else:
            uploads = [await read_raw(request, settings.max_upload_bytes, settings.spool_bytes, settings.upload_dir)]
    except APIError as e:
        PARSE_FAILURES.labels(reason=e.reason).inc()
        raise
    return uploads


@router.post(
    "/encode",
    response_model=EncodeResponse,
    responses=UPLOAD_ERRORS,
    openapi_extra=ENCODE_BODY,
    summary="Encode one checkpoint",
    description="Upload a `.safetensors` checkpoint (raw body or multipart `file`); get its SNE embedding, "
    "predicted test accuracy with a conformal interval, an out-of-distribution score and the layer table. "
    "Identical uploads are answered from the cache (`cached: true`).",
)
async def encode(
    request: Request,
    layer_embeddings: bool = LAYER_EMBEDDINGS,
    settings: Settings = Depends(get_app_settings),
    service: EncodeService = Depends(get_service),
) -> JSONResponse:
    started = time.perf_counter()
    (upload,) = await receive_uploads(request, settings, max_files=1)
    answer = await service.encode(upload)
    return JSONResponse(encode_payload(answer, service.predictor, layer_embeddings, started))


@router.post(
    "/encode/batch",
    response_model=BatchResponse,
    responses={k: v for k, v in UPLOAD_ERRORS.items() if k in (401, 413, 415, 503)},
    openapi_extra=BATCH_BODY,
    summary="Encode several checkpoints in one request",
    description="Each file is answered on its own (`status` 200 with `result`, or its error): one bad file "
    "does not fail the others. The request fails as a whole only for auth (401), size (413) or when every "
    "file was refused for load (503).",
)
async def encode_batch(
    request: Request,
    layer_embeddings: bool = LAYER_EMBEDDINGS,
    settings: Settings = Depends(get_app_settings),
    service: EncodeService = Depends(get_service),
) -> JSONResponse:
    started = time.perf_counter()
    if not is_multipart(request):  # a raw body is one file: that is POST /v1/encode
        PARSE_FAILURES.labels(reason="multipart_required").inc()
        raise APIError(415, "multipart_required", "POST /v1/encode/batch takes multipart/form-data file parts; "
                       "send a single raw checkpoint to POST /v1/encode")
    uploads = await receive_uploads(request, settings, max_files=settings.max_batch_files)
    names = [u.filename for u in uploads]
    outcomes = await asyncio.gather(*(service.encode(u) for u in uploads), return_exceptions=True)
    items: list[dict] = []
    for name, out in zip(names, outcomes):
        if isinstance(out, Answer):
            items.append({"filename": name, "status": 200, "result": encode_payload(out, service.predictor, layer_embeddings, started), "error": None})
        elif isinstance(out, APIError):
            items.append({"filename": name, "status": out.status, "result": None, **error_body(out.reason, out.message)})
        else:
            items.append({"filename": name, "status": 500, "result": None,
                          **error_body("internal", f"internal error ({type(out).__name__}); see the server log")})
    if items and all(i["status"] == 503 for i in items):
        first = next(o for o in outcomes if isinstance(o, APIError))
        raise APIError(503, first.reason, first.message, first.headers)
    return JSONResponse({"results": items, "timings": {"total_ms": round((time.perf_counter() - started) * 1000, 3)}})
