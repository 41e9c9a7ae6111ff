"""One encode, end to end: cache lookup, single flight, parse off the loop, batched forward, cache fill.

`EncodeService.encode(upload)` is what the routes call. Identical uploads (same sha256) that overlap in
time are computed once: the first starts a task that parses, encodes and fills the cache; the others await
that same task (shielded, so a client hanging up does not cancel the work the others wait for).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import anyio
import torch

from app.cache import ResultCache, cache_key
from app.encoding import Encoding, StageTimes
from app.errors import APIError, Reason
from app.metrics import OOD_FLAGS, PARSE_FAILURES, PREDICTED_ACCURACY
from app.parsing import ParsedCheckpoint, parse_upload
from app.settings import Settings
from app.uploads import Upload
from app.worker import BatchWorker
from model.errors import CheckpointError
from model.predictor import Prediction, Predictor

log = logging.getLogger("sne.service")


class EncodeService:
    def __init__(
        self, predictor: Predictor, worker: BatchWorker, cache: ResultCache, settings: Settings,
        large_worker: BatchWorker | None = None, parse_slots: asyncio.Semaphore | None = None,
    ) -> None:
        """One service per served predictor; `parse_slots` is shared by all of them so SNE_PARSE_WORKERS
        bounds the process, not each predictor."""
        self.predictor = predictor
        self.worker = worker
        self.large_worker = large_worker  # lane for checkpoints over SNE_LARGE_CHUNKS (None: one lane)
        self.cache = cache
        self.settings = settings
        self._parse_slots = parse_slots or asyncio.Semaphore(settings.parse_workers)
        self._limits = settings.limits()
        # a large upload's chunk path runs beside its read (model.overlap), in fp32: not where the forward autocasts
        self._overlap = settings.overlap_reads and worker.autocast is None
        self._inflight: dict[str, asyncio.Task] = {}
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def key(self, sha256: str) -> str:
        return cache_key(self.settings.cache_prefix, self.predictor.name, self.predictor.version, sha256)

    # ----------------------------------------------------------------------------------- public
    async def encode(self, upload: Upload) -> Encoding:
        """The encoding of one upload (which this call takes over and closes); `cached` when from the cache."""
        try:
            if self._closing:
                raise APIError(
                    503, Reason.shutting_down, "the service is shutting down; retry on another instance",
                    {"Retry-After": str(self.settings.retry_after_seconds)},
                )
            hit = await self.cache.get(self.key(upload.sha256))
        except BaseException:
            upload.close()
            raise
        if hit is not None:
            upload.close()
            OOD_FLAGS.labels(predictor=self.predictor.name).inc(hit.prediction.ood_flag)
            return hit
        task = self._inflight.get(upload.sha256)
        if task is None:
            task = asyncio.create_task(self._compute(upload), name=f"encode-{upload.sha256[:12]}")
            self._inflight[upload.sha256] = task
            task.add_done_callback(self._forget(upload.sha256))
        else:
            upload.close()  # the same bytes are already being encoded: wait for that
        return await asyncio.shield(task)

    async def drain(self, timeout: float) -> None:
        """Refuse new uploads; wait (up to `timeout`) for the encodes already started to finish."""
        self._closing = True
        tasks = list(self._inflight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("%d encode(s) still running at shutdown", len(pending))

    # ----------------------------------------------------------------------------------- internals
    def _forget(self, sha256: str):
        def done(task: asyncio.Task) -> None:
            if self._inflight.get(sha256) is task:
                del self._inflight[sha256]
            if not task.cancelled():
                task.exception()  # retrieved here: waiters may all have gone away

        return done

    async def _parse(self, upload: Upload) -> ParsedCheckpoint:
        """`parse_upload` in a thread, at most `parse_workers` at once, within `parse_timeout_seconds`.

        A thread cannot be killed: on timeout the request is answered (422) and the thread is abandoned, but
        it keeps its parse slot until it really ends, so runaway parses can never outnumber the slots.
        """
        await self._parse_slots.acquire()
        loop = asyncio.get_running_loop()
        source, sha256 = upload.source, upload.sha256

        def job() -> ParsedCheckpoint:
            try:
                return parse_upload(source, sha256, self.predictor, self._limits, overlap=self._overlap)
            finally:
                loop.call_soon_threadsafe(self._parse_slots.release)

        timeout = self.settings.parse_timeout_seconds
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(job, abandon_on_cancel=True)
        except TimeoutError:
            raise CheckpointError(
                Reason.parse_timeout, f"reading this checkpoint took longer than {timeout:g} s (SNE_PARSE_TIMEOUT_SECONDS)"
            ) from None

    def lane(self, parsed: ParsedCheckpoint) -> BatchWorker:
        """The cost estimate (chunks) picks the lane: a large checkpoint never sits in a batch of small ones."""
        if self.large_worker is not None and parsed.n_chunks > self.settings.large_chunks:
            return self.large_worker
        return self.worker

    async def _encode(self, parsed: ParsedCheckpoint) -> tuple[Prediction, StageTimes]:
        """Queue + forward within `encode_timeout_seconds`; past it 504 (a forward already running finishes in
        its thread, its answer is dropped; a queued checkpoint is never started)."""
        timeout = self.settings.encode_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                return await self.lane(parsed).submit(parsed)
        except TimeoutError:
            raise APIError(
                504, Reason.encode_timeout,
                f"this checkpoint ({parsed.n_chunks} chunks) was not encoded within {timeout:g} s "
                "(SNE_ENCODE_TIMEOUT_SECONDS): the encoder is busy or the checkpoint is very large; retry later",
            ) from None

    async def _compute(self, upload: Upload) -> Encoding:
        try:
            parsed = await self._parse(upload)
        except CheckpointError as e:
            PARSE_FAILURES.labels(reason=e.reason).inc()
            raise APIError.from_checkpoint_error(e) from None
        finally:
            upload.close()
        try:
            prediction, times = await self._encode(parsed)
        except APIError:
            raise
        except torch.OutOfMemoryError:
            raise APIError(
                422, Reason.too_large_to_encode,
                f"this checkpoint ({parsed.n_chunks} chunks) does not fit in the encoder's device memory",
            ) from None
        except Exception as e:
            log.exception("encoding %s failed", upload.sha256)
            raise APIError(500, Reason.encode_failed, f"the encoder failed on this checkpoint ({type(e).__name__})") from None
        if not prediction.is_finite():
            PARSE_FAILURES.labels(reason=Reason.non_finite_output).inc()
            raise APIError(
                422, Reason.non_finite_output,
                "the encoder produced NaN/Inf for this checkpoint (its weights are too extreme to encode)",
            )
        PREDICTED_ACCURACY.labels(predictor=self.predictor.name).observe(prediction.accuracy)
        OOD_FLAGS.labels(predictor=self.predictor.name).inc(prediction.ood_flag)
        encoding = Encoding(
            upload.sha256, prediction, parsed.layers, parsed.skipped, cached=False,
            times=replace(times, parse_ms=parsed.parse_ms),
        )
        await self.cache.set(self.key(upload.sha256), encoding)
        return encoding
