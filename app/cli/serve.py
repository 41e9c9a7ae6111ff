"""`sne serve`: run `app.main:app` with uvicorn on the configured host and port."""
from __future__ import annotations

from typing import Annotated

import typer


def serve(host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted; `host`/`port` default to `SNE_HOST`/`SNE_PORT` (127.0.0.1:8000).

    One process: the batch worker and the cache live in it, so scale out with more processes or replicas
    behind a load balancer (they share Redis), not with uvicorn workers in one container. The uvicorn
    options (connection limits, logging) come from `app.server_config.uvicorn_options`.
    """
    import uvicorn

    from app.server_config import uvicorn_options
    from app.settings import get_settings

    uvicorn.run("app.main:app", **uvicorn_options(get_settings(), host, port))


def serve_command(
    host: Annotated[str | None, typer.Option(help="Bind address (default SNE_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SNE_PORT or 8000).")] = None,
) -> None:
    """Run the HTTP service (app.main:app) with uvicorn."""
    serve(host, port)
