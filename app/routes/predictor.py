"""`GET /v1/predictor`: a served predictor's card (zoo, splits, metrics incl. Kendall tau, config); the
default's, or the one named by `?name=` (or the `X-SNE-Predictor` header)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.auth import require_api_key
from app.deps import SettingsDep
from app.schemas import (
    BAD_QUERY,
    SELECTION_CONFLICT,
    UNAUTHORIZED,
    UNKNOWN_PREDICTOR,
    PredictorCardResponse,
)
from app.selection import PredictorHeader, RegistryDep, chosen_name
from model.predictor import PredictorCard

router = APIRouter(prefix="/v1", tags=["predictor"], dependencies=[Depends(require_api_key)])


@router.get(
    "/predictor",
    response_model=PredictorCardResponse,
    responses={400: SELECTION_CONFLICT, 401: UNAUTHORIZED, 404: UNKNOWN_PREDICTOR, 422: BAD_QUERY},
    summary="A served predictor's card (the default's unless ?name= says otherwise)",
)
async def predictor_card(
    registry: RegistryDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(description="Predictor name or alias (`GET /v1/predictors`).")] = None,
    x_sne_predictor: PredictorHeader = None,
) -> PredictorCard:
    card = registry.resolve(chosen_name(name, x_sne_predictor)).predictor.card
    budgets = card.budgets.model_copy(update={  # what answers are encoded under now: the settings in force
        "layer_chunk_budget": settings.layer_chunk_budget, "checkpoint_chunk_budget": settings.checkpoint_chunk_budget,
    })
    return card.model_copy(update={"budgets": budgets})
