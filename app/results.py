"""What one encode produces and the cache stores: `EncodeResult` (embeddings as float32 arrays)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from app.parsing import LayerRow, ParsedCheckpoint
from model.predictor import Prediction


@dataclass
class EncodeResult:
    embedding: np.ndarray  # [E] float32
    layer_embeddings: np.ndarray  # [L, H] float32, one row per layer of `layers`
    accuracy: float
    gap: float | None
    low: float
    high: float
    coverage: float | None
    ood_score: float | None
    ood_flag: bool
    layers: list[LayerRow]
    skipped: list[dict] = field(default_factory=list)

    @classmethod
    def from_prediction(cls, pred: Prediction, parsed: ParsedCheckpoint) -> "EncodeResult":
        layer_emb = np.asarray(pred.layer_embeddings, dtype=np.float32)
        if layer_emb.ndim != 2:
            layer_emb = layer_emb.reshape(len(parsed.layers), -1)
        return cls(
            embedding=np.asarray(pred.embedding, dtype=np.float32),
            layer_embeddings=layer_emb,
            accuracy=float(pred.accuracy),
            gap=None if pred.gap is None else float(pred.gap),
            low=float(pred.low),
            high=float(pred.high),
            coverage=None if pred.coverage is None else float(pred.coverage),
            ood_score=None if pred.ood_score is None else float(pred.ood_score),
            ood_flag=bool(pred.ood_flag),
            layers=list(parsed.layers),
            skipped=list(parsed.skipped),
        )

    def is_finite(self) -> bool:
        """False when the encoder produced NaN/Inf (extreme weights): such a result is never served."""
        scalars = [self.accuracy, self.low, self.high] + [v for v in (self.gap, self.ood_score) if v is not None]
        return (
            all(math.isfinite(v) for v in scalars)
            and bool(np.isfinite(self.embedding).all())
            and bool(np.isfinite(self.layer_embeddings).all())
        )
