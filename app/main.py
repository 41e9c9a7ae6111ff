"""The FastAPI application: `create_app(settings)` and the module-level `app` (`uvicorn app.main:app`).

Importing this module is cheap: the predictor is loaded, warmed up and the batch worker and cache are
started in the lifespan, and stopped there gracefully (queued and running encodes finish first).
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import torch
from fastapi import FastAPI

from app.cache import make_cache
from app.device import autocast_dtype, resolve_device
from app.errors import install_error_handlers
from app.metrics import LARGE_QUEUE_DEPTH, PREDICTOR_INFO
from app.middleware import MetricsMiddleware
from app.observability import BodyDeadlineMiddleware, RequestIdMiddleware
from app.routes import encode, health, metrics, pages, predictor
from app.service import EncodeService
from app.settings import Settings, get_settings
from app.worker import BatchWorker
from model.checkpoint import checkpoint_from_tensors
from model.predictor import Predictor

log = logging.getLogger("sne.service")

DESCRIPTION = """\
Upload a neural-network checkpoint (`.safetensors`), get a fixed-size embedding of the network from SNE
(a Set-based Neural Network Encoder) and its predicted test accuracy, with a conformal interval and an
out-of-distribution score. Requests are batched dynamically into one encoder forward and answers are cached
by content hash and predictor version.

**Errors** all have one shape: `{"error": {"reason": "<stable code>", "message": "<what to do>"}}`.
415 not safetensors (pickle, zip, ...), 422 malformed checkpoint, 413 too large (refused while streaming),
401 missing/wrong `X-API-Key` (when keys are configured), 503 queue full or shutting down (`Retry-After`).
"""


def load_predictor(settings: Settings, device: torch.device, autocast: torch.dtype | None) -> Predictor:
    """Load (the configured or the shipped default predictor), move it to the device, warm it up."""
    predictor = Predictor.load(settings.predictor_path).to(device)
    if settings.warmup:
        g = torch.Generator().manual_seed(0)
        tiny = checkpoint_from_tensors({
            "0.weight": torch.randn(4, 1, 3, 3, generator=g), "0.bias": torch.randn(4, generator=g),
            "1.weight": torch.randn(3, 4, generator=g), "1.bias": torch.randn(3, generator=g),
        })
        predictor.predict([tiny, tiny], autocast)
    return predictor


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    autocast = autocast_dtype(settings.precision, device)
    predictor_ = await anyio.to_thread.run_sync(load_predictor, settings, device, autocast)
    worker = BatchWorker(
        predictor_,
        max_batch_size=settings.max_batch_size,
        max_batch_chunks=settings.max_batch_chunks,
        max_wait_ms=settings.max_wait_ms,
        queue_limit=settings.queue_limit,
        autocast=autocast,
        retry_after_seconds=settings.retry_after_seconds,
    )
    await worker.start()
    large = None  # the lane of checkpoints over SNE_LARGE_CHUNKS: one at a time, beside the batches
    if settings.large_chunks > 0:
        large = BatchWorker(
            predictor_, max_batch_size=1, max_wait_ms=0.0, queue_limit=settings.large_queue_limit, autocast=autocast,
            retry_after_seconds=settings.retry_after_seconds, name="sne-forward-large",
            depth_gauge=LARGE_QUEUE_DEPTH, limit_setting="SNE_LARGE_QUEUE_LIMIT",
        )
        await large.start()
    cache = make_cache(settings)
    service = EncodeService(predictor_, worker, cache, settings, large_worker=large)
    app.state.device = device
    app.state.predictor = predictor_
    app.state.worker = worker
    app.state.cache = cache
    app.state.service = service
    PREDICTOR_INFO.info({
        "name": predictor_.name,
        "version": predictor_.version,
        "trained": str(predictor_.trained).lower(),
        "device": str(device),
        "precision": "fp32" if autocast is None else settings.precision,
    })
    cache_state = await cache.state()
    log.info(
        "predictor %s %s (trained=%s) on %s; batch<=%d, wait %.1fms; cache %s (%s)",
        predictor_.name, predictor_.version, predictor_.trained, device, settings.max_batch_size,
        settings.max_wait_ms, cache.backend, cache_state,
    )
    if not predictor_.trained:
        log.warning("serving an UNTRAINED predictor: predictions carry no information (every answer says so)")
    try:
        yield
    finally:
        deadline = time.monotonic() + settings.shutdown_timeout_seconds
        lanes = [w for w in (worker, large) if w is not None]
        for w in lanes:
            w.drain()
        await service.drain(settings.shutdown_timeout_seconds)
        for w in lanes:
            await w.stop(max(0.0, deadline - time.monotonic()))
        await cache.close()
        for name in ("service", "worker", "cache", "predictor"):
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
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(pages.router)
    if docs:
        app.include_router(pages.docs_router)
        app.mount(pages.SWAGGER_STATIC, pages.swagger_assets(), name="swagger-ui")
    return app


app = create_app()
