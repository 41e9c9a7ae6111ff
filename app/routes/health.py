"""`GET /healthz` (the process answers) and `GET /readyz` (predictor loaded, worker running, cache state)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.schemas import Health, PredictorRef, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: predictor not loaded or worker stopped."}},
    summary="Readiness: predictor loaded and worker running; reports the cache (Redis) state",
)
async def readyz(request: Request, response: Response) -> Readiness:
    state = request.app.state
    settings = state.settings
    predictor = getattr(state, "predictor", None)
    worker = getattr(state, "worker", None)
    cache = getattr(state, "cache", None)
    service = getattr(state, "service", None)
    cache_info: dict[str, Any] = {"backend": getattr(cache, "backend", None), "state": "not started"}
    if cache is not None:
        cache_info["state"] = await cache.state()  # the error text stays in the server log, not in a public probe
    ready = predictor is not None and worker is not None and worker.running and not getattr(service, "closing", True)
    response.status_code = 200 if ready else 503
    return Readiness(
        ready=bool(ready),
        predictor=None if predictor is None else
        PredictorRef(name=predictor.name, version=predictor.version, trained=predictor.trained),
        worker={
            "running": bool(worker is not None and worker.running),
            "device": str(getattr(state, "device", settings.device)),
            "precision": settings.precision,
            "queue_depth": 0 if worker is None else worker.depth,
            "queue_limit": settings.queue_limit,
            "max_batch_size": settings.max_batch_size,
        },
        cache=cache_info,
    )
