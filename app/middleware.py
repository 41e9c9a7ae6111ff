"""Pure-ASGI middleware counting every HTTP request by route template, method and status, with latency."""
from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import REQUEST_LATENCY, REQUESTS

UNMATCHED = "unmatched"  # one label for every path no route matches (bounded cardinality)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            REQUESTS.labels(route=route, method=scope.get("method", ""), status=str(status)).inc()
            REQUEST_LATENCY.labels(route=route).observe(time.perf_counter() - start)
