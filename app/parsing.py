"""Turn an upload into what the worker needs: parse, guard, chunk, and describe the layers.

`parse_upload` is plain blocking code (safetensors reading, float32 conversion, pad-chunking); the service
runs it in a worker thread so the event loop keeps accepting requests. Every problem with the file is a
`model.errors.CheckpointError` (415/422 with the parser's message), including a layer too large to encode.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.errors import Reason
from model.checkpoint import load_checkpoint
from model.chunking import ChunkedLayer, count_chunks, expected_chunks
from model.errors import CheckpointError
from model.predictor import Predictor

log = logging.getLogger("sne.parsing")


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table in the response."""

    name: str
    type: str
    level: int
    shape: list[int]
    parameters: int
    chunks: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParsedCheckpoint:
    sha256: str
    chunked: list[ChunkedLayer]
    layers: list[LayerRow]
    skipped: list[dict] = field(default_factory=list)
    n_chunks: int = 0
    parse_ms: float = 0.0


def _too_many_chunks(name: str, n: int, limit: int) -> CheckpointError:
    return CheckpointError(
        "layer_too_large",
        f"layer {name!r} has {n} chunks, more than the limit of {limit} (SNE_MAX_LAYER_CHUNKS): set attention is "
        "quadratic in a layer's chunk count, so this layer cannot be encoded by this service",
    )


def parse_upload(source: bytes | Path, sha256: str, predictor: Predictor, max_layer_chunks: int) -> ParsedCheckpoint:
    """Parse and chunk one checkpoint; raise `CheckpointError` for anything the service must refuse.

    Whatever else goes wrong while reading an upload (a library limit such as torch's 64 dimensions, an
    overflow, memory) is the file's fault too: it becomes a `CheckpointError` (422), never a 500.
    """
    try:
        return _parse(source, sha256, predictor, max_layer_chunks)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError(Reason.too_large_to_parse, "the checkpoint needs more memory to read than this service has") from None
    except Exception as e:  # noqa: BLE001 - the upload is untrusted input: every failure is a refusal
        log.warning("upload %s could not be parsed: %s: %s", sha256[:12], type(e).__name__, e)
        detail = str(e)[:200]
        raise CheckpointError(Reason.unparseable, f"the checkpoint could not be read ({type(e).__name__}: {detail})") from None


def _parse(source: bytes | Path, sha256: str, predictor: Predictor, max_layer_chunks: int) -> ParsedCheckpoint:
    t0 = time.perf_counter()
    ckpt = load_checkpoint(source)
    c = predictor.config.chunk_size
    for layer in ckpt.layers:  # refuse before spending time and memory on chunking
        n = expected_chunks(layer, c)
        if n > max_layer_chunks:
            raise _too_many_chunks(layer.name, n, max_layer_chunks)
    chunked = predictor.chunk(ckpt)
    rows = []
    total = 0
    for layer, cl in zip(ckpt.layers, chunked):
        n = count_chunks([cl])
        if n > max_layer_chunks:  # authoritative count, should chunking ever differ from the estimate
            raise _too_many_chunks(layer.name, n, max_layer_chunks)
        total += n
        rows.append(LayerRow(layer.name, layer.kind.value, layer.level, layer.shape, layer.n_params, n))
    skipped = [{"name": s.name, "dtype": s.dtype, "shape": s.shape, "reason": s.reason} for s in ckpt.skipped]
    return ParsedCheckpoint(sha256, chunked, rows, skipped, total, (time.perf_counter() - t0) * 1000)
