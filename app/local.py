"""In-process encoding for the CLI (`sne encode`, `sne gate --local`): the service's own parse path, limits
and response builder, without HTTP, so the CLI and the service cannot drift apart."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.encoding import Encoding, StageTimes
from app.parsing import ParsedCheckpoint, parse_upload
from app.schemas import EncodeResponse, encode_response
from app.settings import Settings
from model.errors import CheckpointError
from model.overlap import batch_vectors
from model.packing import pack
from model.predictor import Predictor


def file_sha256(path: Path) -> str:
    """Content hash of a file, read in blocks (the same key the service caches under)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Bar:
    """Progress on stderr while a large checkpoint is read (a terminal only; started by the first report)."""

    MIN_PARAMS = 50_000_000  # ~1 s of statistics per 50 M parameters on one core: below that, no bar

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(stderr=True)
            if total < self.MIN_PARAMS or not console.is_terminal:
                self.bar = False
                return
            self.bar = Progress(TextColumn(self.label), BarColumn(), TextColumn("{task.percentage:>3.0f}% of parameters"),
                                TimeElapsedColumn(), console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        if self.bar:
            self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def parse_file(source: Path | bytes, predictor: Predictor, settings: Settings | None = None) -> ParsedCheckpoint:
    """Parse one checkpoint under the service's limits; raises `CheckpointError` exactly as the service would.

    A large file shows a progress bar on the terminal while its tensors are read.
    """
    settings = settings or Settings()
    try:
        sha = hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else file_sha256(source)
    except OSError as e:
        raise CheckpointError("unreadable", f"cannot read checkpoint: {e.strerror or e}") from None
    bar = _Bar(f"reading {source}" if isinstance(source, Path) else "reading checkpoint")
    try:
        return parse_upload(source, sha, predictor, settings.limits(), bar, overlap=True)  # large files: model.overlap
    finally:
        bar.close()


def encode_parsed(parsed: Sequence[ParsedCheckpoint], predictor: Predictor) -> list[EncodeResponse]:
    """One packed forward over already-parsed checkpoints; one `/v1/encode` body per checkpoint."""
    t0 = time.perf_counter()
    layers = [p.chunked for p in parsed]
    together = batch_vectors(predictor.model, layers, [p.vectors for p in parsed], predictor.device)
    predictions = predictor.predict_packed(pack(layers), vectors=together)
    encode_ms = (time.perf_counter() - t0) * 1000
    out = []
    for p, prediction in zip(parsed, predictions):
        times = StageTimes(parse_ms=p.parse_ms, encode_ms=encode_ms, batch_size=len(parsed))
        encoding = Encoding(p.sha256, prediction, p.layers, p.skipped, cached=False, times=times)
        out.append(encode_response(encoding, predictor, total_ms=p.parse_ms + encode_ms))
    return out
