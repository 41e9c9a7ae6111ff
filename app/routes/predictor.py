"""`GET /v1/predictor`: the loaded predictor's card (zoo, splits, metrics incl. Kendall tau, config)."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from app.auth import require_api_key
from app.deps import PredictorDep
from app.schemas import UNAUTHORIZED, PredictorCardResponse
from model.predictor import PredictorCard

router = APIRouter(prefix="/v1", tags=["predictor"], dependencies=[Depends(require_api_key)])


@router.get(
    "/predictor",
    response_model=PredictorCardResponse,
    responses={401: UNAUTHORIZED},
    summary="The loaded predictor's card",
)
async def predictor_card(predictor: PredictorDep) -> PredictorCard:
    return predictor.card
