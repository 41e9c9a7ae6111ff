"""Which predictor a request asked for: `?predictor=NAME` or the `X-SNE-Predictor` header (the default when
neither is given), held for the whole request through the registry's lease (see app.registry)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from app.errors import APIError, Reason
from app.registry import Registry, Served

PREDICTOR_HEADER = "X-SNE-Predictor"

PredictorQuery = Annotated[str | None, Query(
    alias="predictor", description="Name of the predictor to use (see `GET /v1/predictors`); the default when unset.",
)]
PredictorHeader = Annotated[str | None, Header(
    alias=PREDICTOR_HEADER, description="Same as `?predictor=`; when both are given they must agree.",
)]


def chosen_name(query: str | None, header: str | None) -> str | None:
    """The requested name; 400 when the query and the header name different predictors."""
    query, header = (query or "").strip() or None, (header or "").strip() or None
    if query and header and query != header:
        raise APIError(400, Reason.bad_request,
                       f"?predictor={query!r} and {PREDICTOR_HEADER}: {header!r} disagree; send one of them")
    return query or header


def get_registry(request: Request) -> Registry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise APIError(503, Reason.not_ready, "the service is starting up (predictors not loaded yet); retry shortly",
                       {"Retry-After": "1"})
    return registry


async def leased_predictor(
    request: Request, predictor: PredictorQuery = None, x_sne_predictor: PredictorHeader = None
) -> AsyncIterator[Served]:
    """The chosen predictor, leased until the response is done (404 `unknown_predictor` before the body is read)."""
    registry = get_registry(request)
    async with registry.lease(chosen_name(predictor, x_sne_predictor)) as served:
        yield served


ServedDep = Annotated[Served, Depends(leased_predictor)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
