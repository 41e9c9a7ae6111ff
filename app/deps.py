"""FastAPI dependencies: the per-app objects the lifespan put on `app.state`, as `Annotated` aliases the
routes declare parameters with (`service: ServiceDep`), as in FastAPI's full-stack template.

All `async def`: FastAPI would run plain `def` dependencies in its thread pool, a thread hop per request each.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.errors import APIError, Reason
from app.service import EncodeService
from app.settings import Settings
from model.predictor import Predictor


def _state(request: Request, name: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise APIError(503, Reason.not_ready, "the service is starting up (predictor not loaded yet); retry shortly",
                       {"Retry-After": "1"})
    return value


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_predictor(request: Request) -> Predictor:
    return _state(request, "predictor")


async def get_service(request: Request) -> EncodeService:
    return _state(request, "service")


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ServiceDep = Annotated[EncodeService, Depends(get_service)]
