"""Read and encode one checkpoint at once: the chunk path of the parts already read runs while the rest is read.

A large checkpoint's encode is two long stages, each on one core: the exact statistics of every value
(`model.chunking.chunk_file`, linear in the file) and the encoder's forward (bounded by the chunk budget). A
part's chunk-path vector depends on its own chunks only (`SNE.part_vectors`), so here a worker thread encodes
the parts in pieces of about `PIECE_CHUNKS` chunks as their layers come off the read, and the rest of the
forward (statistics projection, layer and network encoders, heads) runs once on the whole checkpoint. On two
cores the two stages overlap, and when the read ends the reader's thread takes the pieces the worker has not
reached: a 1.1 B-parameter read and its forward take about as long as the longer of the two, a short read
about the forward split over both cores (`benchmarks/real_checkpoints.py`).

Pieces are cut at fixed chunk counts, on layer boundaries, so one file always gives the same pieces and the
same embedding; a checkpoint of at most one piece gives the bits of `model(pack([layers]))`, a larger one
equals it to float rounding (the matrix products run over other batch sizes; tested).
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import torch

from model.admission import Limits
from model.checkpoint import read_header
from model.chunking import ChunkedCheckpoint, ChunkedLayer, Progress, chunk_file
from model.packing import pack
from model.sne import Encoder

PIECE_CHUNKS = 1024  # chunks a piece: the unit of work of the worker and, once the read ends, of the reader
OVERLAP_PARAMS = 1_000_000  # below this a checkpoint is a piece or two: one forward, no worker
_END = None


def worth_overlapping(n_params: int, model: Encoder) -> bool:
    """Whether `read_with_vectors` pays for a checkpoint of `n_params` (a stats-only model has no chunk path)."""
    return n_params >= OVERLAP_PARAMS and model.cfg.use_chunks


def read(
    source: str | Path | bytes, model: Encoder, chunk_size: int, limits: Limits, seed: bytes | str,
    progress: Progress | None = None, device: torch.device | str = "cpu",
) -> tuple[ChunkedCheckpoint, torch.Tensor | None]:
    """`read_with_vectors` where the header says it pays (`worth_overlapping`), else `chunk_file` and no
    vectors: how `sne encode`, the service and the benchmark read. A header that cannot be read raises what `chunk_file`
    would (the same `CheckpointFile` check)."""
    if worth_overlapping(read_header(source, limits).n_params, model):
        return read_with_vectors(source, model, chunk_size, limits, seed, progress, device)
    return chunk_file(source, chunk_size, limits, seed, progress, with_pairs=model.cfg.pair_stats), None


def part_vectors(model: Encoder, layers: list[ChunkedLayer], device: torch.device | str) -> torch.Tensor:
    """The chunk-path vectors of `layers`' parts (a piece, or a whole checkpoint), without a graph."""
    with torch.no_grad():
        return model.part_vectors(pack([layers]).to(device))


class _PieceEncoder:
    """The reader cuts layers into numbered pieces (`put`, on the reader's thread) and the worker thread
    encodes them with `model.part_vectors` as they come. When the read ends, the reader's thread joins in on
    the pieces still queued (`finish`): the worker may be behind, and the reader's core is free. Every piece
    runs on `threads` torch threads whichever thread takes it, so which one took it does not change a bit."""

    def __init__(self, model: Encoder, device: torch.device, threads: int) -> None:
        self.model, self.device, self.threads = model, device, threads
        self.inbox: queue.Queue[tuple[int, list[ChunkedLayer]] | None] = queue.Queue()
        self.vectors: dict[int, torch.Tensor] = {}  # piece number -> [P_i, h] (one SNE) or [members, P_i, h]
        self.error: BaseException | None = None
        self._piece: list[ChunkedLayer] = []
        self._chunks = self._sent = 0
        self.thread = threading.Thread(target=self._run, name="sne-pieces", daemon=True)
        self.thread.start()

    def put(self, layer: ChunkedLayer) -> None:
        """A layer off the read: pieces are cut at fixed chunk counts (the same file, the same pieces)."""
        self._piece.append(layer)
        self._chunks += sum(ch.values.shape[0] for _, ch in layer.parts)
        if self._chunks >= PIECE_CHUNKS:
            self._send()

    def _send(self) -> None:
        self.inbox.put((self._sent, self._piece))
        self._piece, self._chunks, self._sent = [], 0, self._sent + 1

    def _encode(self, number: int, piece: list[ChunkedLayer]) -> None:
        self.vectors[number] = part_vectors(self.model, piece, self.device)

    def _run(self) -> None:
        """Pieces until the end mark; on an error, stop (later pieces wait in the queue, which the reader's
        thread then stops taking) and leave the error for `finish`. torch's thread count is per thread: this
        one sets its own, so the reader keeps a core. The get comes first because torch sets a thread's count
        on its first call, from the last count set anywhere, which would undo a set made before it."""
        torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            while (item := self.inbox.get()) is not _END:
                self._encode(*item)
        except BaseException as e:  # noqa: BLE001 - handed to the reader, raised there
            self.error = e

    def finish(self) -> torch.Tensor:
        """The last piece, then the queued pieces on this thread too until none is left; the parts' vectors in
        the checkpoint's order."""
        if self._piece:
            self._send()
        own = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            while self.error is None:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is not _END:
                    self._encode(*item)
        finally:
            torch.set_num_threads(own)
            self.abandon()
        if self.error is not None:
            raise self.error
        return torch.cat([self.vectors[k] for k in range(self._sent)], dim=-2)

    def abandon(self) -> None:
        """Stop the worker after its current piece: pieces still queued are dropped (after an error no one
        reads their vectors; after `finish` none is left)."""
        try:
            while True:
                self.inbox.get_nowait()
        except queue.Empty:
            pass
        self.inbox.put(_END)
        self.thread.join()


def batch_vectors(
    model: Encoder, checkpoints: list[list[ChunkedLayer]], vectors: list[torch.Tensor | None], device: torch.device | str
) -> torch.Tensor | None:
    """The chunk-path vectors of a packed batch of `checkpoints`, in `pack`'s order: each checkpoint's own
    where it was read overlapped, computed here, one checkpoint at a time, where not. None when none was read
    overlapped: the forward then computes them all in one go, as it would without this module. So a batch that
    mixes large uploads (read overlapped) with small ones reuses the large ones' vectors."""
    if all(v is None for v in vectors):
        return None
    out = [v.to(device) if v is not None else part_vectors(model, layers, device)
           for layers, v in zip(checkpoints, vectors, strict=True)]
    return torch.cat(out, dim=-2)


def read_with_vectors(
    source: str | Path | bytes, model: Encoder, chunk_size: int, limits: Limits, seed: bytes | str,
    progress: Progress | None = None, device: torch.device | str = "cpu",
) -> tuple[ChunkedCheckpoint, torch.Tensor]:
    """`chunk_file`, and the part vectors of its checkpoint computed while it reads (the read takes one
    statistics worker, the encoder the other torch threads, at least one, so two threads on two cores do not
    become three: measured in docs/benchmark-history.md; when the read ends, this thread encodes the queued pieces
    beside the worker): `model(pack([ck.layers]), vectors)` is then the forward. Raises what `chunk_file` raises, or what the encoder raised."""
    threads = torch.get_num_threads()
    worker = _PieceEncoder(model, torch.device(device), max(1, threads - 1))
    torch.set_num_threads(1)  # the statistics pass on one worker (`stats_pass` reads this count); the reader's
    # own torch calls are small: a second thread would spin beside them
    try:
        try:
            ck = chunk_file(source, chunk_size, limits, seed, progress, worker.put, model.cfg.pair_stats)
        except BaseException:
            worker.abandon()
            raise
        return ck, worker.finish()
    finally:  # the worker has ended: the caller's count again, and the one new threads start with
        torch.set_num_threads(threads)
