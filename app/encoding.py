"""What the service answers for one upload: the predictor's `Prediction` plus the layer table and how it
was obtained (`Encoding`). The cache stores it, the worker fills its prediction, `schemas.encode_response`
turns it into the HTTP body."""
from __future__ import annotations

from dataclasses import dataclass, field

from app.parsing import LayerRow
from model.predictor import Prediction


@dataclass(frozen=True)
class StageTimes:
    """Milliseconds spent in each stage of an encode; all zero for a cache hit."""

    parse_ms: float = 0.0  # parse + chunk, in a worker thread
    queue_ms: float = 0.0  # from submission to the start of its batch's forward
    encode_ms: float = 0.0  # wall time of that batched forward (pack included)
    batch_size: int = 0  # checkpoints in that forward


@dataclass(frozen=True)
class Encoding:
    """One checkpoint's answer before serialisation."""

    sha256: str
    prediction: Prediction
    layers: list[LayerRow]  # one row per row of `prediction.layer_embeddings`
    skipped: list[dict] = field(default_factory=list)  # tensors not encoded: name, dtype, shape, reason
    cached: bool = False
    times: StageTimes = StageTimes()
