"""`POST /v1/encode` and `POST /v1/encode/batch`: checkpoints in, embeddings and predicted accuracy out."""
from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.auth import require_api_key
from app.deps import SettingsDep
from app.encoding import Encoding
from app.errors import APIError, Reason
from app.metrics import PARSE_FAILURES
from app.schemas import (
    BAD_QUERY,
    UNKNOWN_PREDICTOR,
    UPLOAD_ERRORS,
    BatchItem,
    BatchResponse,
    EncodeResponse,
    ErrorDetail,
    encode_response,
)
from app.selection import ServedDep
from app.settings import Settings
from app.uploads import Upload, is_multipart, read_multipart, read_raw

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
LayerEmbeddings = Annotated[bool, Query(description="Also return one embedding per layer (`layer_embeddings`).")]


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


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
                    422, Reason.missing_file,
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
    response_model_exclude_unset=True,  # `layer_embeddings` only when asked for
    responses={**UPLOAD_ERRORS, 404: UNKNOWN_PREDICTOR},
    openapi_extra=ENCODE_BODY,
    summary="Encode one checkpoint",
    description="Upload a `.safetensors` checkpoint (raw body or multipart `file`); get its SNE embedding, "
    "predicted test accuracy with a conformal interval, an out-of-distribution score and the layer table. "
    "Identical uploads are answered from the cache (`cached: true`).",
)
async def encode(
    request: Request, settings: SettingsDep, served: ServedDep, layer_embeddings: LayerEmbeddings = False
) -> EncodeResponse:
    started = time.perf_counter()
    service = served.service
    (upload,) = await receive_uploads(request, settings, max_files=1)
    encoding = await service.encode(upload)
    return encode_response(
        encoding, service.predictor, total_ms=_ms_since(started), with_layer_embeddings=layer_embeddings
    )


@router.post(
    "/encode/batch",
    response_model=BatchResponse,
    response_model_exclude_unset=True,
    # a bad file is answered inside the 200 body; 422 only for a bad query parameter; 415 for a raw body
    responses={**{k: v for k, v in UPLOAD_ERRORS.items() if k in (400, 401, 413, 415, 503, 507)}, 404: UNKNOWN_PREDICTOR,
               422: BAD_QUERY},
    openapi_extra=BATCH_BODY,
    summary="Encode several checkpoints in one request",
    description="Each file is answered on its own (`status` 200 with `result`, or its error): one bad file "
    "does not fail the others. The request fails as a whole only for auth (401), size (413), storage (507) "
    "or when every file was refused for load (503).",
)
async def encode_batch(
    request: Request, settings: SettingsDep, served: ServedDep, layer_embeddings: LayerEmbeddings = False
) -> BatchResponse:
    started = time.perf_counter()
    service = served.service
    if not is_multipart(request):  # a raw body is one file: that is POST /v1/encode
        PARSE_FAILURES.labels(reason=Reason.multipart_required).inc()
        raise APIError(415, Reason.multipart_required, "POST /v1/encode/batch takes multipart/form-data file parts; "
                       "send a single raw checkpoint to POST /v1/encode")
    uploads = await receive_uploads(request, settings, max_files=settings.max_batch_files)
    names = [u.filename for u in uploads]
    outcomes = await asyncio.gather(*(service.encode(u) for u in uploads), return_exceptions=True)
    items: list[BatchItem] = []
    for name, out in zip(names, outcomes):
        if isinstance(out, Encoding):
            body = encode_response(out, service.predictor, total_ms=_ms_since(started), with_layer_embeddings=layer_embeddings)
            items.append(BatchItem(filename=name, status=200, result=body, error=None))
        elif isinstance(out, APIError):
            items.append(BatchItem(filename=name, status=out.status, result=None,
                                   error=ErrorDetail(reason=Reason(out.reason), message=out.message)))
        else:
            message = f"internal error ({type(out).__name__}); see the server log"
            items.append(BatchItem(filename=name, status=500, result=None,
                                   error=ErrorDetail(reason=Reason.internal, message=message)))
    if items and all(i.status == 503 for i in items):
        first = next(o for o in outcomes if isinstance(o, APIError))
        raise APIError(503, first.reason, first.message, first.headers)
    return BatchResponse(results=items, timings={"total_ms": round(_ms_since(started), 3)})
