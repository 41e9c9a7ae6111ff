"""`sne serve`: run `app.main:app` with uvicorn on the configured host and port."""
from __future__ import annotations

import copy
from typing import Annotated, Any

import typer


def log_config() -> dict[str, Any]:
    """uvicorn's logging config plus the service's own `sne.*` loggers (start-up, Redis state, worker)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["sne"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted; `host`/`port` default to `SNE_HOST`/`SNE_PORT` (127.0.0.1:8000).

    One process: the batch worker and the cache live in it, so scale out with more processes or replicas
    behind a load balancer (they share Redis), not with uvicorn workers in one container.
    """
    import uvicorn

    from app.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port if port is not None else settings.port,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds) + 5,
        log_level="info",
        log_config=log_config(),
    )


def serve_command(
    host: Annotated[str | None, typer.Option(help="Bind address (default SNE_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SNE_PORT or 8000).")] = None,
) -> None:
    """Run the HTTP service (app.main:app) with uvicorn."""
    serve(host, port)
