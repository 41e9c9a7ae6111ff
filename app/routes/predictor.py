"""`GET /v1/predictor`: the loaded predictor's card (zoo, splits, metrics incl. Kendall tau, config)."""
from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends

from app.auth import require_api_key
from app.deps import PredictorDep
from app.schemas import ErrorResponse, PredictorCard


def json_safe(value: Any) -> Any:
    """The card with NaN/Inf (e.g. a metric that could not be computed) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


router = APIRouter(prefix="/v1", tags=["predictor"], dependencies=[Depends(require_api_key)])


@router.get(
    "/predictor",
    response_model=PredictorCard,
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key."}},
    summary="The loaded predictor's card",
)
async def predictor_card(predictor: PredictorDep) -> PredictorCard:
    return PredictorCard.model_validate(json_safe(predictor.card))
