"""Pydantic models of the HTTP API (responses and errors), with the examples OpenAPI shows, and
`encode_response`: the one place an `Encoding` becomes the `/v1/encode` body (route, `sne encode --json`
and `sne gate --local` alike)."""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.encoding import Encoding
from app.errors import Reason
from model.predictor import DEFAULT_PREDICTOR_DIR, Predictor, PredictorCard

SHA_EXAMPLE = "9f2c1d0b6e8a4f3c2b1a09f8e7d6c5b4a3928170f6e5d4c3b2a1908f7e6d5c4b"


class PredictorRef(BaseModel):
    name: str = Field(examples=["sne-small"])
    version: str = Field(examples=["2024-06-01-3f2a9c1b7e44"])
    trained: bool = Field(description="False for the placeholder untrained predictor: its predictions mean nothing.")


class Interval(BaseModel):
    low: float = Field(description="Lower end of the conformal interval of the predicted accuracy.")
    high: float
    coverage: float | None = Field(
        description="Nominal coverage of [low, high] (e.g. 0.9); null when the predictor is uncalibrated "
        "(the interval is then [0, 1])."
    )


class OOD(BaseModel):
    score: float | None = Field(
        description="Mean distance of the embedding to its k nearest training-zoo embeddings; null when the "
        "predictor ships no reference embeddings."
    )
    flag: bool = Field(
        description="True when score > threshold or the architecture is one the predictor never saw: the "
        "prediction may be unreliable."
    )
    unseen_architecture: bool = Field(
        False, description="The checkpoint's layer kinds, or its number of layers, were never seen in training "
        "(the card's `ood.architectures`)."
    )
    threshold: float | None = Field(description="The predictor card's OOD threshold.")


class LayerInfo(BaseModel):
    name: str = Field(examples=["features.0"])
    type: str = Field(description="linear, conv1d, conv2d, conv3d, norm, embedding or other.", examples=["conv2d"])
    level: int = Field(description="Depth position of the layer (0 = first).")
    shape: list[int] = Field(examples=[[16, 1, 3, 3]])
    parameters: int = Field(description="Weights + bias of this layer.")
    chunks: int = Field(description="Chunks of the whole layer (weight and bias, chunk size from the predictor).")
    chunks_sampled: int = Field(
        description="Chunks the encoder saw: all of them, or a stratified sample seeded by the file's sha256 when the "
        "layer is over SNE_LAYER_CHUNK_BUDGET or the checkpoint over SNE_CHECKPOINT_CHUNK_BUDGET."
    )


class SkippedTensor(BaseModel):
    name: str
    dtype: str
    shape: list[int]
    reason: str


class Timings(BaseModel):
    parse_ms: float = Field(description="Parsing + chunking (0 for a cache hit).")
    queue_ms: float = Field(description="Wait in the batch queue before the forward started (0 for a cache hit).")
    encode_ms: float = Field(description="The batched forward this checkpoint was part of (0 for a cache hit).")
    total_ms: float = Field(description="From the request reaching the handler to the answer, upload included.")


class EncodeResponse(BaseModel):
    """The answer of `POST /v1/encode` (and each successful item of `/v1/encode/batch`)."""

    sha256: str = Field(description="sha256 of the uploaded bytes.")
    predictor: PredictorRef
    embedding: list[float] = Field(description="The network embedding: `config.members * config.encoding` floats (an ensemble's members side by side).")
    predicted_accuracy: float = Field(ge=0, le=1)
    predicted_gap: float | None = Field(description="Predicted train-test gap; null when the predictor has no gap head.")
    interval: Interval
    ood: OOD
    layers: list[LayerInfo]
    skipped: list[SkippedTensor] = Field(
        default_factory=list, description="Tensors not encoded (integer buffers, running statistics, empty)."
    )
    layer_embeddings: list[list[float]] | None = Field(
        None, description="One vector per entry of `layers`; present only with `?layer_embeddings=true`."
    )
    cached: bool = Field(description="True when the answer came from the result cache.")
    warning: str | None = Field(description="Set when the answer should not be trusted (an untrained predictor).")
    timings: Timings

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sha256": SHA_EXAMPLE,
                    "predictor": {"name": "sne-small", "version": "2024-06-01-3f2a9c1b7e44", "trained": True},
                    "embedding": [0.0132, -0.221, 0.974, 0.0518],
                    "predicted_accuracy": 0.912,
                    "predicted_gap": 0.031,
                    "interval": {"low": 0.874, "high": 0.950, "coverage": 0.9},
                    "ood": {"score": 0.41, "flag": False, "unseen_architecture": False, "threshold": 1.25},
                    "layers": [
                        {"name": "0", "type": "conv2d", "level": 0, "shape": [16, 1, 3, 3], "parameters": 160, "chunks": 17, "chunks_sampled": 17},
                        {"name": "7", "type": "linear", "level": 3, "shape": [10, 16], "parameters": 170, "chunks": 11, "chunks_sampled": 11},
                    ],
                    "skipped": [],
                    "cached": False,
                    "warning": None,
                    "timings": {"parse_ms": 1.9, "queue_ms": 4.2, "encode_ms": 38.5, "total_ms": 46.0},
                }
            ]
        }
    )


class ErrorDetail(BaseModel):
    reason: Reason = Field(description="Stable code, e.g. pickle, truncated, too_large, queue_full, unauthorized.")
    message: str = Field(description="What is wrong, in words a user can act on.")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx of the service has this body."""

    error: ErrorDetail


class BatchItem(BaseModel):
    """One file of a batch: `result` when it was encoded, `error` (with its HTTP status) when it was refused."""

    filename: str | None
    status: int = Field(description="The HTTP status this file alone would have got (200, 413, 415, 422, 503...).")
    result: EncodeResponse | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="One item per uploaded file, in upload order.")
    timings: dict[str, float] = Field(description="`total_ms` of the whole request.")


def _shipped_card_example(schema: dict[str, Any]) -> None:
    """OpenAPI example of `/v1/predictor`: the shipped default predictor's real card (per-pair rows and
    training history left out for length), read when the schema is generated, never made up."""
    path = DEFAULT_PREDICTOR_DIR / "card.json"
    if not path.exists():
        return
    card = PredictorCard.model_validate(json.loads(path.read_text())).model_dump(mode="json")
    card["metrics"].pop("pairs", None)
    card.get("training", {}).pop("history", None)
    schema["examples"] = [card]


class PredictorCardResponse(PredictorCard):
    """The loaded predictor's card (`model.predictor.PredictorCard`): config, zoo, splits, metrics
    (`kendall_tau` per evaluation per method), conformal quantiles, OOD threshold, plus any other keys its
    trainer wrote. The example is the card of the predictor this package ships."""

    model_config = ConfigDict(json_schema_extra=_shipped_card_example)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool = Field(description="Predictor loaded and worker running (the cache never makes it false).")
    predictor: PredictorRef | None
    worker: dict[str, Any] = Field(description="running, device, precision, queue_depth, queue_limit, max_batch_size.")
    cache: dict[str, Any] = Field(
        description="backend (redis or lru) and state: up, down (answers are computed, not cached) or in-process."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ready": True,
                    "predictor": {"name": "sne-small", "version": "2024-06-01-3f2a9c1b7e44", "trained": True},
                    "worker": {"running": True, "device": "cpu", "precision": "fp32", "queue_depth": 0,
                               "queue_limit": 256, "max_batch_size": 32},
                    "cache": {"backend": "redis", "state": "up"},
                }
            ]
        }
    )


def _error(description: str, reason: Reason, message: str) -> dict[str, Any]:
    """An OpenAPI response entry: the error shape with an example of this status (a real message)."""
    example = {"error": {"reason": reason.value, "message": message}}
    return {"model": ErrorResponse, "description": description, "content": {"application/json": {"example": example}}}


UNAUTHORIZED = _error(
    "API keys are configured and `X-API-Key` is missing or wrong.",
    Reason.unauthorized, "missing X-API-Key header: this service requires an API key",
)
UNKNOWN_PREDICTOR = _error(
    "`?predictor=` / `X-SNE-Predictor` names no served predictor (`GET /v1/predictors` lists them).",
    Reason.unknown_predictor, "no predictor named 'mine'; known: default, sne-small-digits, sweep-mlp",
)
SELECTION_CONFLICT = _error(
    "The query and the `X-SNE-Predictor` header name two different predictors.",
    Reason.bad_request, "?predictor='mine' and X-SNE-Predictor: 'theirs' disagree; send one of them",
)
BAD_QUERY = _error(
    "An invalid query parameter (in this service's one error shape).",
    Reason.invalid_request, "query.layer_embeddings: Input should be a valid boolean, unable to interpret input",
)
#: error responses shown in OpenAPI for the upload routes, each with an example of its own
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error(
        "A malformed HTTP body: broken multipart, bad Content-Length, or the client hung up mid-upload.",
        Reason.bad_multipart, "multipart/form-data without a boundary parameter",
    ),
    401: UNAUTHORIZED,
    413: _error(
        "Upload larger than SNE_MAX_UPLOAD_BYTES (refused while streaming), or too many files.",
        Reason.too_large,
        "upload of 2147483648 bytes exceeds the limit of 1073741824 bytes (SNE_MAX_UPLOAD_BYTES)",
    ),
    415: _error(
        "Not a safetensors file (reason pickle, zip or not_safetensors).",
        Reason.pickle,
        "this is a Python pickle (torch.save .pt/.bin); pickles can run code and are never loaded. "
        "Save the state_dict with safetensors.torch.save_file instead.",
    ),
    422: _error(
        "Malformed safetensors (truncated, bad_header, bad_offsets, ...), no float weights, a layer too large "
        "to encode, or an invalid query parameter.",
        Reason.truncated, "header claims 4120 bytes but the file has only 310 after it",
    ),
    503: _error(
        "Queue full, shutting down or still starting; retry after `Retry-After` seconds.",
        Reason.queue_full, "256 checkpoints are already waiting (SNE_QUEUE_LIMIT); retry shortly",
    ),
    507: _error(
        "The server could not store a large upload while receiving it (disk full, file size limit); "
        "nothing was kept.",
        Reason.insufficient_storage,
        "the server could not store the upload (No space left on device); nothing was kept (SNE_UPLOAD_DIR)",
    ),
}


def predictor_warning(predictor: Predictor) -> str | None:
    """The warning every answer of an untrained predictor carries."""
    if predictor.trained:
        return None
    return (
        f"predictor {predictor.name} ({predictor.version}) is UNTRAINED: random weights, so the predicted accuracy, "
        "its interval and the OOD score carry no information. Serve a trained predictor (SNE_PREDICTOR_PATH)."
    )


def encode_response(
    encoding: Encoding, predictor: Predictor, *, total_ms: float, with_layer_embeddings: bool = False
) -> EncodeResponse:
    """The `/v1/encode` body for one encoding; `total_ms` is the caller's end-to-end time (upload included)."""
    p = encoding.prediction
    extra = {"layer_embeddings": p.layer_embeddings.tolist()} if with_layer_embeddings else {}  # else: absent
    return EncodeResponse(
        sha256=encoding.sha256,
        predictor=PredictorRef(name=predictor.name, version=predictor.version, trained=predictor.trained),
        embedding=p.embedding.tolist(),
        predicted_accuracy=p.accuracy,
        predicted_gap=p.gap,
        interval=Interval(low=p.low, high=p.high, coverage=p.coverage),
        ood=OOD(score=p.ood_score, flag=p.ood_flag, unseen_architecture=p.unseen_architecture,
                threshold=predictor.card.ood.threshold),
        layers=[LayerInfo(**row.as_dict()) for row in encoding.layers],
        skipped=[SkippedTensor(**s) for s in encoding.skipped],
        cached=encoding.cached,
        warning=predictor_warning(predictor),
        timings=Timings(
            parse_ms=round(encoding.times.parse_ms, 3),
            queue_ms=round(encoding.times.queue_ms, 3),
            encode_ms=round(encoding.times.encode_ms, 3),
            total_ms=round(total_ms, 3),
        ),
        **extra,
    )
