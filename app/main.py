"""The FastAPI application: `create_app(settings)` and the module-level `app` (`uvicorn app.main:app`).

Importing this module is cheap: the predictors are loaded, warmed up and their batch workers and the cache
are started in the lifespan (app.registry), and stopped there gracefully (queued and running encodes
finish first). SIGHUP reloads the predictors (app.reload).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from app.cache import make_cache
from app.device import autocast_dtype, resolve_device
from app.errors import install_error_handlers
from app.middleware import MetricsMiddleware
from app.observability import BodyDeadlineMiddleware, RequestIdMiddleware
from app.registry import Registry
from app.reload import reload_on_sighup
from app.routes import encode, health, metrics, pages, predictor, predictors
from app.settings import Settings, get_settings
from model import stats_pass

log = logging.getLogger("sne.service")

DESCRIPTION = """\
Upload a neural-network checkpoint (`.safetensors`), get a fixed-size embedding of the network from SNE
(a Set-based Neural Network Encoder) and its predicted test accuracy, with a conformal interval and an
out-of-distribution score. Requests are batched dynamically into one encoder forward and answers are cached
by content hash, predictor name and version. Several predictors can be served (`GET /v1/predictors`); pick
one per request with `?predictor=NAME` or the `X-SNE-Predictor` header (the default otherwise).

**Errors** all have one shape: `{"error": {"reason": "<stable code>", "message": "<what to do>"}}`.
415 not safetensors (pickle, zip, ...), 422 malformed checkpoint, 413 too large (refused while streaming),
401 missing/wrong `X-API-Key` (when keys are configured), 404 `unknown_predictor` (the message lists the
known names), 503 queue full or shutting down (`Retry-After`).
"""


def publish_default(app: FastAPI, registry: Registry) -> None:
    """Routes that know one predictor (/readyz, /, the default encode path) read it from `app.state`."""
    default = registry.default
    app.state.predictor = default.predictor
    app.state.worker = default.worker
    app.state.service = default.service


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    warm_s = await asyncio.to_thread(stats_pass.warm_up)  # the statistics' compiled loops, not in a request
    device = resolve_device(settings.device)
    autocast = autocast_dtype(settings.precision, device)
    cache = make_cache(settings)
    registry = Registry(settings, device, autocast, cache)
    registry.on_swap = lambda: publish_default(app, registry)
    try:
        await registry.start()
    except BaseException:
        await registry.stop(0)
        await cache.close()
        raise
    app.state.device = device
    app.state.cache = cache
    app.state.registry = registry
    cache_state = await cache.state()
    default = registry.default.predictor
    log.info(
        "default predictor %s %s (trained=%s) on %s; batch<=%d, wait %.1fms; cache %s (%s); stats loops %.2fs",
        default.name, default.version, default.trained, device, settings.max_batch_size,
        settings.max_wait_ms, cache.backend, cache_state, warm_s,
    )
    unhook = reload_on_sighup(registry)
    try:
        yield
    finally:
        unhook()
        await registry.stop(settings.shutdown_timeout_seconds)
        await cache.close()
        for name in ("service", "worker", "cache", "predictor", "registry"):
            setattr(app.state, name, None)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; `settings` default to the `SNE_*` environment. Nothing heavy happens until its lifespan."""
    settings = settings if settings is not None else get_settings()
    docs = settings.docs  # SNE_DOCS=false: no /docs, no /openapi.json (and no Swagger UI assets)
    app = FastAPI(
        title="SNE weight-space encoding service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url=None,  # served by app.routes.pages from local assets (the default loads them from a CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyDeadlineMiddleware, timeout=settings.body_timeout_seconds)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: every log line of the request carries its id
    app.include_router(encode.router)
    app.include_router(predictor.router)
    app.include_router(predictors.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(pages.router)
    if docs:
        app.include_router(pages.docs_router)
        app.mount(pages.SWAGGER_STATIC, pages.swagger_assets(), name="swagger-ui")
    return app


app = create_app()
