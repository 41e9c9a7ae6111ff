"""In-process encoding for the CLI (`sne encode`, `sne gate --local`): the service's own parse path, limits
and response builder, without HTTP, so the CLI and the service cannot drift apart."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

from app.encoding import Encoding, StageTimes
from app.parsing import ParsedCheckpoint, parse_upload
from app.schemas import EncodeResponse, encode_response
from app.settings import Settings
from model.packing import pack
from model.predictor import Predictor


def file_sha256(path: Path) -> str:
    """Content hash of a file, read in blocks (the same key the service caches under)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_file(source: Path | bytes, predictor: Predictor, settings: Settings | None = None) -> ParsedCheckpoint:
    """Parse one checkpoint under the service's limits; raises `CheckpointError` exactly as the service would."""
    settings = settings or Settings()
    sha = hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else file_sha256(source)
    return parse_upload(source, sha, predictor, settings.max_layer_chunks)


def encode_parsed(parsed: Sequence[ParsedCheckpoint], predictor: Predictor) -> list[EncodeResponse]:
    """One packed forward over already-parsed checkpoints; one `/v1/encode` body per checkpoint."""
    t0 = time.perf_counter()
    predictions = predictor.predict_packed(pack([p.chunked for p in parsed]))
    encode_ms = (time.perf_counter() - t0) * 1000
    out = []
    for p, prediction in zip(parsed, predictions):
        times = StageTimes(parse_ms=p.parse_ms, encode_ms=encode_ms, batch_size=len(parsed))
        encoding = Encoding(p.sha256, prediction, p.layers, p.skipped, cached=False, times=times)
        out.append(encode_response(encoding, predictor, total_ms=p.parse_ms + encode_ms))
    return out
