"""`GET /v1/predictors` (what is served, and what could not be) and `POST /v1/admin/reload` (rescan
SNE_PREDICTORS_DIR and swap without dropping requests; SIGHUP does the same)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.auth import require_api_key
from app.errors import APIError, Reason
from app.predictors import Problem
from app.registry import Registry, ReloadResult, Served
from app.schemas import UNAUTHORIZED, ErrorResponse
from app.selection import RegistryDep

router = APIRouter(prefix="/v1", tags=["predictor"], dependencies=[Depends(require_api_key)])

CONFIG_SUMMARY = ("name", "chunk_size", "hidden", "encoding", "heads", "sab_blocks", "layer_norm")


class PredictorSummary(BaseModel):
    name: str = Field(description="The card name: what `predictor.name` of an answer and the cache key carry.")
    aliases: list[str] = Field(description="Other names it answers to: its folder name (`default` for the default).")
    version: str
    trained: bool
    default: bool = Field(description="Used when a request names no predictor.")
    config: dict[str, Any] = Field(description="The encoder's configuration (main sizes).")
    kendall_tau: dict[str, dict[str, float | None]] = Field(
        description="The card's Kendall tau per evaluation and method (sne and each baseline).",
    )


class PredictorProblem(BaseModel):
    folder: str = Field(description="The folder under SNE_PREDICTORS_DIR (or the directory itself).")
    error: str = Field(description="Why it is not served (a changed folder that fails keeps its old version).")


class PredictorList(BaseModel):
    default: str = Field(description="Name of the default predictor.")
    predictors: list[PredictorSummary]
    errors: list[PredictorProblem] = Field(description="Folders that are not served, with the reason.")


class ReloadResponse(BaseModel):
    loaded: list[str] = Field(description="New or changed predictors now served.")
    unchanged: list[str] = Field(description="Predictors whose files did not change (same worker, same queue).")
    removed: list[str] = Field(description="Predictors no longer served (they finish their requests first).")
    errors: list[PredictorProblem]


def _problems(problems: list[Problem]) -> list[PredictorProblem]:
    return [PredictorProblem(folder=p.folder, error=p.error) for p in problems]


def summary(registry: Registry, served: Served) -> PredictorSummary:
    card = served.predictor.card
    config = card.config.model_dump()
    return PredictorSummary(
        name=served.name,
        aliases=registry.aliases(served),
        version=served.predictor.version,
        trained=served.predictor.trained,
        default=served.is_default,
        config={k: config[k] for k in CONFIG_SUMMARY if k in config},
        kendall_tau=card.metrics.kendall_tau,
    )


@router.get("/predictors", response_model=PredictorList, responses={401: UNAUTHORIZED},
            summary="The served predictors (choose one with ?predictor= or X-SNE-Predictor)")
async def list_predictors(registry: RegistryDep) -> PredictorList:
    return PredictorList(
        default=registry.default.name,
        predictors=[summary(registry, s) for s in registry.served],
        errors=_problems(registry.problems),
    )


async def admin_allowed(request: Request) -> None:
    """With API keys configured, a valid key (checked by `require_api_key`); without any, refused unless
    SNE_ADMIN_OPEN=true: an open service must not let anyone make it reload."""
    settings = request.app.state.settings
    if not settings.api_keys and not settings.admin_open:
        raise APIError(403, Reason.forbidden, "admin routes need an API key and none is configured: set SNE_API_KEYS "
                       "(or SNE_ADMIN_OPEN=true on a trusted network), or send the process SIGHUP")


FORBIDDEN = {"model": ErrorResponse, "description": "No API keys are configured and SNE_ADMIN_OPEN is not true."}


@router.post("/admin/reload", response_model=ReloadResponse, dependencies=[Depends(admin_allowed)],
             responses={401: UNAUTHORIZED, 403: FORBIDDEN}, tags=["admin"],
             summary="Rescan SNE_PREDICTORS_DIR and swap in new/changed predictors without dropping requests")
async def reload_predictors(registry: RegistryDep) -> ReloadResponse:
    result: ReloadResult = await registry.reload()
    return ReloadResponse(loaded=result.loaded, unchanged=result.unchanged, removed=result.removed,
                          errors=_problems(result.problems))
