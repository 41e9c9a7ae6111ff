"""The uvicorn options of `sne serve`, in one function so whoever starts the server cannot lose a limit."""
from __future__ import annotations

from typing import Any

from app.observability import log_config
from app.settings import Settings


def uvicorn_options(settings: Settings, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`: address, graceful shutdown, logging and the
    connection limits (concurrency, keep-alive, header size, backlog) from `settings`.

    h11 explicitly: its `h11_max_incomplete_event_size` bounds the request line and headers, and it is the
    parser every install has.
    """
    return {
        "host": host or settings.host,
        "port": port if port is not None else settings.port,
        "http": "h11",
        "lifespan": "on",
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_seconds) + 5,
        "log_level": "info",
        "log_config": log_config(settings.log_format),
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "h11_max_incomplete_event_size": settings.http_header_bytes,
        "backlog": settings.backlog,
    }
