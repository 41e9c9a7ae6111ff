"""Request ids, per-request log context and the body-read deadline: pure ASGI middleware plus logging glue.

* `RequestIdMiddleware`: every request gets an id: the client's `X-Request-ID` when it is a sane token,
  a fresh one otherwise. It is echoed in the response and held in a contextvar, so every log line written
  while serving the request (uvicorn's access line, the service's, the parse thread's) carries it.
* `BodyDeadlineMiddleware`: the whole body must arrive within `SNE_BODY_TIMEOUT_SECONDS`; a slower upload
  (1 byte/s, a stalled client) is answered 408 and its connection closed, so it cannot hold a slot forever.
* `log_config(format)`: the `logging.config.dictConfig` of `sne serve`: text or JSON (python-json-logger),
  with the request id in every line.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import APIError, Reason

REQUEST_ID_HEADER = "X-Request-ID"
#: the id of the request being served ("-" outside requests: start-up, the batch loop)
request_id: ContextVar[str] = ContextVar("request_id", default="-")
#: client-chosen ids are kept only when short and harmless in a log line or a header
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets `request_id` for the request and adds `X-Request-ID` to its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        rid = given if _SANE_ID.match(given) else new_request_id()
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class BodyDeadlineMiddleware:
    """408 `body_timeout` (and `Connection: close`) when a request body takes longer than `timeout` seconds.

    The clock starts when the app first asks for the body; once the body is complete, `receive` is passed
    through untouched (waiting for a disconnect is not an upload).
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False

        async def timed_receive() -> Message:
            nonlocal deadline, complete
            if complete:
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise APIError(
                    408, Reason.body_timeout,
                    f"the upload did not arrive within {self.timeout:g} s (SNE_BODY_TIMEOUT_SECONDS); send it faster "
                    "or in a smaller file",
                    {"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (`%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def log_config(fmt: str = "text", level: str = "INFO") -> dict:
    """dictConfig for uvicorn and the `sne.*` loggers; `fmt="json"` writes one JSON object per line."""
    if fmt == "json":
        formatter: dict = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}
    handler = {"class": "logging.StreamHandler", "formatter": "default", "filters": ["request_id"],
               "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {"uvicorn": quiet, "uvicorn.error": {"level": level}, "uvicorn.access": dict(quiet), "sne": dict(quiet)},
    }
