"""FastAPI dependencies: the per-app objects the lifespan put on `app.state`.

All `async def`: FastAPI would run plain `def` dependencies in its thread pool, a thread hop per request each.
"""
from __future__ import annotations

from fastapi import Request

from app.cache import ResultCache
from app.errors import APIError
from app.service import EncodeService
from app.settings import Settings
from app.worker import BatchWorker
from model.predictor import Predictor


def _state(request: Request, name: str):
    value = getattr(request.app.state, name, None)
    if value is None:
        raise APIError(503, "not_ready", "the service is starting up (predictor not loaded yet); retry shortly",
                       {"Retry-After": "1"})
    return value


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_predictor(request: Request) -> Predictor:
    return _state(request, "predictor")


async def get_worker(request: Request) -> BatchWorker:
    return _state(request, "worker")


async def get_cache(request: Request) -> ResultCache:
    return _state(request, "cache")


async def get_service(request: Request) -> EncodeService:
    return _state(request, "service")
