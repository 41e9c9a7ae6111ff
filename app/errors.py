"""The service's one error shape, `{"error": {"reason": ..., "message": ...}}`, for every 4xx/5xx.

`APIError` is raised anywhere in the app; the handlers installed by `install_error_handlers` turn it, a
`model.errors.CheckpointError`, FastAPI's request-validation errors and Starlette's 404/405 into that shape,
so a client only ever parses one kind of error body. `reason` is a short stable code (also the
`sne_parse_failures_total` label for rejected uploads); `message` says what to do about it.
"""
from __future__ import annotations

import logging
from enum import StrEnum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.metrics import REJECTIONS
from model.errors import CheckpointError

log = logging.getLogger("sne.service")


class Reason(StrEnum):
    """Every `error.reason` the service sends (OpenAPI lists them; clients may switch on them)."""

    # 400: the HTTP request itself
    bad_request = "bad_request"
    bad_multipart = "bad_multipart"
    incomplete_upload = "incomplete_upload"
    # 401/403/404/405
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    not_found = "not_found"
    unknown_predictor = "unknown_predictor"  # 404: ?predictor= / X-SNE-Predictor names no served predictor
    method_not_allowed = "method_not_allowed"
    # 408: the body did not arrive in time (SNE_BODY_TIMEOUT_SECONDS)
    body_timeout = "body_timeout"
    # 413: size
    too_large = "too_large"
    too_many_files = "too_many_files"
    # 415: not safetensors at all (model.errors.CheckpointError), or not multipart where only that is taken
    pickle = "pickle"
    zip = "zip"
    not_safetensors = "not_safetensors"
    unsupported_media_type = "unsupported_media_type"
    multipart_required = "multipart_required"
    # 422: a malformed or unencodable checkpoint (model.errors.CheckpointError), or a bad request field
    bad_header = "bad_header"
    bad_offsets = "bad_offsets"
    invalid_safetensors = "invalid_safetensors"
    truncated = "truncated"
    unreadable = "unreadable"
    unsupported_dtype = "unsupported_dtype"
    non_finite = "non_finite"
    no_layers = "no_layers"
    bad_tensor = "bad_tensor"
    # 422: over a limit checked from the header before any work (model.admission.Limits, SNE_* settings)
    header_too_large = "header_too_large"
    metadata_too_large = "metadata_too_large"
    too_many_tensors = "too_many_tensors"
    too_many_dims = "too_many_dims"
    dim_too_large = "dim_too_large"
    too_many_params = "too_many_params"
    too_many_parts = "too_many_parts"
    too_large_to_encode = "too_large_to_encode"
    non_finite_output = "non_finite_output"
    missing_file = "missing_file"
    invalid_request = "invalid_request"
    unparseable = "unparseable"  # any other exception while reading an upload (app.parsing)
    too_large_to_parse = "too_large_to_parse"
    parse_timeout = "parse_timeout"
    # 5xx
    internal = "internal"
    encode_failed = "encode_failed"
    not_ready = "not_ready"
    queue_full = "queue_full"
    shutting_down = "shutting_down"
    unavailable = "unavailable"
    encode_timeout = "encode_timeout"  # 504: not encoded within SNE_ENCODE_TIMEOUT_SECONDS
    insufficient_storage = "insufficient_storage"  # 507: the upload could not be spooled (disk full, ...)
    http_error = "http_error"


#: checkpoint reasons meaning "this is not a safetensors file at all" (415); every other one is 422
UNSUPPORTED_MEDIA = frozenset({Reason.pickle, Reason.zip, Reason.not_safetensors})


def checkpoint_status(e: CheckpointError) -> int:
    """The one place a `CheckpointError` becomes an HTTP status."""
    return 415 if e.reason in UNSUPPORTED_MEDIA else 422


class APIError(Exception):
    """An HTTP error with a stable `reason` code and a human `message`."""

    def __init__(self, status: int, reason: Reason | str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    @classmethod
    def from_checkpoint_error(cls, e: CheckpointError) -> APIError:
        return cls(checkpoint_status(e), e.reason, e.message)


def error_body(reason: Reason | str, message: str) -> dict:
    return {"error": {"reason": str(reason), "message": message}}


def error_response(status: int, reason: Reason | str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    REJECTIONS.labels(status=str(status), reason=str(reason)).inc()
    return JSONResponse(error_body(reason, message), status_code=status, headers=headers)


_STATUS_REASONS = {
    400: Reason.bad_request,
    401: Reason.unauthorized,
    403: Reason.forbidden,
    404: Reason.not_found,
    405: Reason.method_not_allowed,
    413: Reason.too_large,
    415: Reason.unsupported_media_type,
    422: Reason.invalid_request,
    503: Reason.unavailable,
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.reason, exc.message, exc.headers)

    @app.exception_handler(CheckpointError)
    async def _checkpoint_error(request: Request, exc: CheckpointError) -> JSONResponse:
        return error_response(checkpoint_status(exc), exc.reason, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return error_response(422, Reason.invalid_request, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = _STATUS_REASONS.get(exc.status_code, Reason.http_error)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, reason, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug or a device failure
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, Reason.internal, f"internal error ({type(exc).__name__}); see the server log")
