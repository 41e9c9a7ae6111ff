"""The dynamic batcher: many requests in, one packed encoder forward per batch, each request answered.

As in Triton's dynamic batcher and TEI: requests queue (bounded: `queue_limit`, then 503); the batcher takes
the oldest request and waits until `max_batch_size` checkpoints have arrived, the next checkpoint would
push the batch past `max_batch_chunks` chunks, or `max_wait_ms` has passed since the oldest request
arrived — whichever comes first — then runs one `pack` + forward for the whole batch in its own thread
(one forward at a time: one device). While a forward runs the event loop keeps accepting and queueing, so
under load the next batch is ready the moment the device is free.

A checkpoint bigger than the chunk budget still runs, alone. If a batched forward raises (e.g. out of
memory), its checkpoints are retried one by one so one bad input cannot fail its batch mates.

`stop()` is graceful: new submissions get 503 `shutting_down`, everything already queued is encoded and
answered, then the thread ends (checkpoints still queued after the timeout get 503).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from prometheus_client import Gauge

from app.encoding import StageTimes
from app.errors import APIError, Reason
from app.metrics import BATCH_SIZE, ENCODE_DURATION, QUEUE_DEPTH
from app.parsing import ParsedCheckpoint
from model.overlap import batch_vectors
from model.packing import pack
from model.predictor import Prediction, Predictor

log = logging.getLogger("sne.worker")


@dataclass
class _Job:
    parsed: ParsedCheckpoint
    future: asyncio.Future
    enqueued: float


class BatchWorker:
    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int = 32,
        max_batch_chunks: int = 262_144,
        max_wait_ms: float = 5.0,
        queue_limit: int = 256,
        autocast: torch.dtype | None = None,
        retry_after_seconds: int = 1,
        executor: ThreadPoolExecutor | None = None,
        name: str = "sne-forward",
        depth_gauge: Gauge = QUEUE_DEPTH,
        limit_setting: str = "SNE_QUEUE_LIMIT",
    ) -> None:
        self.predictor = predictor
        self.label = predictor.name  # the `predictor` label of this worker's metrics
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_chunks = max(1, max_batch_chunks)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.queue_limit = max(1, queue_limit)
        self.autocast = autocast
        self.retry_after = str(retry_after_seconds)
        self.name = name  # of the forward thread (a second worker is the large-checkpoint lane)
        self._depth_gauge = depth_gauge.labels(predictor=self.label)
        self._limit_setting = limit_setting
        self._queue: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        # several workers (one per predictor) may share one forward thread: one forward at a time per device
        self._shared_executor = executor
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False  # no new submissions
        self._draining = False  # no more waiting for batches to fill (shutdown has begun)
        self._aborted = False  # shutdown ran out of time: take no further batch
        self.batches = 0  # forwards run
        self.encoded = 0  # checkpoints encoded

    # ----------------------------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        if self._task is not None:
            return
        self._executor = self._shared_executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._task = asyncio.create_task(self._run(), name="sne-batcher")

    def drain(self) -> None:
        """Shutdown has begun: run what is queued right away instead of waiting for batches to fill
        (submissions from requests already in flight are still accepted until `stop`)."""
        self._draining = True
        self._wakeup.set()

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued and running (within `timeout`), end the thread."""
        self._stopping = self._draining = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("worker did not drain within %.1fs; %d queued checkpoint(s) refused", timeout, len(self._queue))
                self._aborted = True
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    log.debug("worker loop cancelled")
                except Exception:
                    log.exception("worker loop failed while stopping")
            except Exception:
                log.exception("worker loop failed")
        while self._queue:  # anything left after a timeout
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(self._unavailable(Reason.shutting_down, "the service is shutting down"))
        self._depth_gauge.set(0)
        if self._executor is not None and self._executor is not self._shared_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    # ----------------------------------------------------------------------------------- submission
    def _unavailable(self, reason: Reason, message: str) -> APIError:
        return APIError(503, reason, message, {"Retry-After": self.retry_after})

    async def submit(self, parsed: ParsedCheckpoint) -> tuple[Prediction, StageTimes]:
        """Queue one parsed checkpoint and wait for its prediction and the queue/forward times (parse_ms 0);
        503 when the queue is full or stopping."""
        if self._stopping or self._task is None or self._task.done():
            raise self._unavailable(Reason.shutting_down, "the service is shutting down; retry on another instance")
        if len(self._queue) >= self.queue_limit:
            raise self._unavailable(
                Reason.queue_full, f"{len(self._queue)} checkpoints are already waiting ({self._limit_setting}); retry shortly"
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(parsed, future, time.perf_counter()))
        self._depth_gauge.set(len(self._queue))
        self._wakeup.set()
        return await future

    # ----------------------------------------------------------------------------------- batching
    def _ready(self) -> bool:
        """True when the queue already holds a full batch (by count or by chunk budget)."""
        if len(self._queue) >= self.max_batch_size:
            return True
        chunks = 0
        for job in self._queue:
            chunks += job.parsed.n_chunks
            if chunks >= self.max_batch_chunks:
                return True
        return False

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        chunks = 0
        while self._queue and len(batch) < self.max_batch_size:
            job = self._queue[0]
            if job.future.done():  # its waiter went away
                self._queue.popleft()
                continue
            if batch and chunks + job.parsed.n_chunks > self.max_batch_chunks:
                break
            self._queue.popleft()
            batch.append(job)
            chunks += job.parsed.n_chunks
        self._depth_gauge.set(len(self._queue))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued + self.max_wait
            while not self._draining and not self._ready():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(remaining):  # (not wait_for: it can swallow a cancel on 3.11)
                        await self._wakeup.wait()
                except TimeoutError:
                    break
            if self._aborted:
                return
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._forward, [j.parsed for j in batch])
            except asyncio.CancelledError:  # stop() gave up waiting: answer this batch, never leave it hanging
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(self._unavailable(Reason.shutting_down, "the service is shutting down"))
                raise
            except Exception as e:  # noqa: BLE001 - the executor itself failed (shut down): answer, never hang
                results = [e] * len(batch)
            elapsed = time.perf_counter() - started
            self.batches += 1
            self.encoded += len(batch)
            BATCH_SIZE.labels(predictor=self.label).observe(len(batch))
            ENCODE_DURATION.labels(predictor=self.label).observe(elapsed)
            for job, res in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    times = StageTimes(0.0, (started - job.enqueued) * 1000, elapsed * 1000, len(batch))
                    job.future.set_result((res, times))

    def _forward(self, items: list[ParsedCheckpoint]) -> list[Prediction | BaseException]:
        """Runs in the forward thread: pack + one forward (the chunk path only of the checkpoints not read
        overlapped, `model.overlap.batch_vectors`); on failure, each checkpoint alone."""
        try:
            layers = [p.chunked for p in items]
            vectors = batch_vectors(self.predictor.model, layers, [p.vectors for p in items], self.predictor.device)
            return list(self.predictor.predict_packed(pack(layers), self.autocast, vectors))
        except Exception as e:
            if len(items) == 1:
                log.exception("encoder forward failed for %s", items[0].sha256)
                return [e]
            log.warning("batched forward of %d failed (%s: %s); encoding one by one", len(items), type(e).__name__, e)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            out: list[Prediction | BaseException] = []
            for p in items:
                out.extend(self._forward([p]))
            return out
