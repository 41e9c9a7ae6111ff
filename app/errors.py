"""The service's one error shape, `{"error": {"reason": ..., "message": ...}}`, for every 4xx/5xx.

`APIError` is raised anywhere in the app; the handlers installed by `install_error_handlers` turn it, a
`model.errors.CheckpointError`, FastAPI's request-validation errors and Starlette's 404/405 into that shape,
so a client only ever parses one kind of error body. `reason` is a short stable code (also the
`sne_parse_failures_total` label for rejected uploads); `message` says what to do about it.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.metrics import REJECTIONS
from model.errors import CheckpointError

log = logging.getLogger("sne.service")


class APIError(Exception):
    """An HTTP error with a stable `reason` code and a human `message`."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    @classmethod
    def from_checkpoint_error(cls, e: CheckpointError) -> "APIError":
        """415 when the upload is not safetensors at all (pickle, zip, ...), 422 when it is malformed."""
        return cls(e.http_status, e.reason, e.message)

    def body(self) -> dict:
        return error_body(self.reason, self.message)


def error_body(reason: str, message: str) -> dict:
    return {"error": {"reason": reason, "message": message}}


def error_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    REJECTIONS.labels(status=str(status), reason=reason).inc()
    return JSONResponse(error_body(reason, message), status_code=status, headers=headers)


_STATUS_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.reason, exc.message, exc.headers)

    @app.exception_handler(CheckpointError)
    async def _checkpoint_error(request: Request, exc: CheckpointError) -> JSONResponse:
        return error_response(exc.http_status, exc.reason, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = _STATUS_REASONS.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, reason, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug or a device failure
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the server log")
