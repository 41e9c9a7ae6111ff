"""Turn an upload into what the worker needs: admit, chunk under the budget, and describe the layers.

`parse_upload` is plain blocking code (header bounds, one tensor at a time from the mapped file, budgeted
chunking: `model.chunking.chunk_file`); the service runs it in a worker thread so the event loop keeps
accepting requests. Every problem with the file is a `model.errors.CheckpointError` (415/422 with the
parser's message, naming the `SNE_*` setting when a limit refused it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from model.admission import Limits
from model.chunking import ChunkedLayer, LayerRow, Progress, chunk_file
from model.predictor import Predictor

__all__ = ["LayerRow", "ParsedCheckpoint", "parse_upload"]


@dataclass
class ParsedCheckpoint:
    sha256: str
    chunked: list[ChunkedLayer]
    layers: list[LayerRow]
    skipped: list[dict] = field(default_factory=list)
    n_chunks: int = 0  # chunks the encoder will see (after budget sampling)
    parse_ms: float = 0.0


def parse_upload(
    source: bytes | Path, sha256: str, predictor: Predictor, limits: Limits, progress: Progress | None = None
) -> ParsedCheckpoint:
    """Admit and chunk one checkpoint with the predictor's chunk size; samples are seeded by `sha256`."""
    t0 = time.perf_counter()
    ck = chunk_file(source, predictor.config.chunk_size, limits, sha256, progress)
    skipped = [{"name": s.name, "dtype": s.dtype, "shape": s.shape, "reason": s.reason} for s in ck.skipped]
    return ParsedCheckpoint(sha256, ck.layers, ck.rows, skipped, ck.n_chunks, (time.perf_counter() - t0) * 1000)
