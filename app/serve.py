"""`sne serve`: run `app.main:app` with uvicorn on the configured host and port."""
from __future__ import annotations

from app.server_config import uvicorn_options
from app.settings import get_settings


def serve(host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted; `host`/`port` default to `SNE_HOST`/`SNE_PORT` (127.0.0.1:8000).

    One process: the batch worker and the cache live in it, so scale out with more processes or replicas
    behind a load balancer (they share Redis), not with uvicorn workers in one container.
    """
    import uvicorn

    uvicorn.run("app.main:app", **uvicorn_options(get_settings(), host, port))
