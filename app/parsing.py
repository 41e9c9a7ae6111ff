"""Turn an upload into what the worker needs: admit, chunk under the budget, and describe the layers.

`parse_upload` is plain blocking code (header bounds, one tensor at a time from the mapped file, budgeted
chunking: `model.chunking.chunk_file`); the service runs it in a worker thread so the event loop keeps
accepting requests. Every problem with the file is a `model.errors.CheckpointError` (415/422 with the
parser's message, naming the `SNE_*` setting when a limit refused it).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.errors import Reason
from model import overlap as overlapped
from model.admission import Limits
from model.chunking import ChunkedLayer, LayerRow, Progress, chunk_file
from model.errors import CheckpointError
from model.predictor import Predictor

__all__ = ["LayerRow", "ParsedCheckpoint", "parse_upload"]

log = logging.getLogger("sne.parsing")


@dataclass
class ParsedCheckpoint:
    sha256: str
    chunked: list[ChunkedLayer]
    layers: list[LayerRow]
    skipped: list[dict] = field(default_factory=list)
    n_chunks: int = 0  # chunks the encoder will see (after budget sampling)
    parse_ms: float = 0.0
    vectors: torch.Tensor | None = None  # the parts' chunk-path vectors, computed while reading (`overlap`)


def parse_upload(
    source: bytes | Path, sha256: str, predictor: Predictor, limits: Limits, progress: Progress | None = None,
    overlap: bool = False,
) -> ParsedCheckpoint:
    """Admit and chunk one checkpoint with the predictor's chunk size; samples are seeded by `sha256`. With
    `overlap`, a large file's parts' chunk-path vectors are also computed while it is read (`model.overlap`;
    the CLI asks for this, and the service unless SNE_OVERLAP_READS is off or its forward autocasts).

    Whatever else goes wrong while reading an upload (a library limit, an overflow, memory) is the file's
    fault too: it becomes a `CheckpointError` (422), never a 500.
    """
    try:
        return _parse(source, sha256, predictor, limits, progress, overlap)
    except CheckpointError:
        raise
    except torch.OutOfMemoryError:  # the chunk path of an overlapped read, on the encoder's device
        raise CheckpointError(Reason.too_large_to_encode, "this checkpoint does not fit in the encoder's device memory") from None
    except MemoryError:
        raise CheckpointError(Reason.too_large_to_parse, "the checkpoint needs more memory to read than this service has") from None
    except Exception as e:  # noqa: BLE001 - the upload is untrusted input: every failure is a refusal
        log.warning("upload %s could not be parsed: %s: %s", sha256[:12], type(e).__name__, e)
        detail = str(e)[:200]
        raise CheckpointError(Reason.unparseable, f"the checkpoint could not be read ({type(e).__name__}: {detail})") from None


def _parse(
    source: bytes | Path, sha256: str, predictor: Predictor, limits: Limits, progress: Progress | None = None,
    overlap: bool = False,
) -> ParsedCheckpoint:
    t0 = time.perf_counter()
    c = predictor.config.chunk_size
    vectors = None
    if overlap:
        ck, vectors = overlapped.read(source, predictor.model, c, limits, sha256, progress, predictor.device)
    else:
        ck = chunk_file(source, c, limits, sha256, progress, with_pairs=predictor.config.pair_stats)  # none unread
    skipped = [{"name": s.name, "dtype": s.dtype, "shape": s.shape, "reason": s.reason} for s in ck.skipped]
    return ParsedCheckpoint(sha256, ck.layers, ck.rows, skipped, ck.n_chunks, (time.perf_counter() - t0) * 1000, vectors)
