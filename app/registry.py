"""The served predictors, each with its own batch worker and encode service, swapped atomically on reload.

One worker per predictor (a packed batch runs through one model); all workers share one forward thread,
so forwards still run one at a time on the device. The cache and the parse limiter are shared too.

A request takes a *lease* on the predictor it asked for (`lease(name)`) for its whole life. `reload()`
rescans the sources (`app.predictors`), loads what is new or changed (in a thread, the old one keeps
answering meanwhile), keeps what is unchanged (same worker, same queue), then swaps the name table in one
assignment. A replaced or removed predictor is retired in the background: once its last lease is returned
its worker finishes its queue and stops, so requests in flight finish on the predictor they started with.
A changed folder that fails to load keeps its previous version serving, and the failure is listed.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import torch

from app import predictors as sources
from app.cache import ResultCache
from app.errors import APIError, Reason
from app.metrics import LARGE_QUEUE_DEPTH, PREDICTOR_INFO, QUEUE_DEPTH
from app.predictors import DEFAULT_NAME, Problem, Source
from app.service import EncodeService
from app.settings import Settings
from app.worker import BatchWorker
from model.predictor import Predictor

log = logging.getLogger("sne.registry")


@dataclass(eq=False)
class Served:
    """One predictor being served: its source, model, worker and encode service, and its open leases."""

    source: Source
    predictor: Predictor
    worker: BatchWorker
    service: EncodeService
    leases: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.predictor.name

    @property
    def lanes(self) -> list[BatchWorker]:
        """Its batch worker and, when SNE_LARGE_CHUNKS > 0, the large-checkpoint lane."""
        return [self.worker] + ([self.service.large_worker] if self.service.large_worker is not None else [])

    @property
    def is_default(self) -> bool:
        return self.source.is_default


@dataclass
class ReloadResult:
    loaded: list[str] = field(default_factory=list)  # new or changed, now served
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # no longer served (retired)
    problems: list[Problem] = field(default_factory=list)


class Registry:
    def __init__(
        self, settings: Settings, device: torch.device, autocast: torch.dtype | None, cache: ResultCache
    ) -> None:
        self.settings = settings
        self.device = device
        self.autocast = autocast
        self.cache = cache
        self.problems: list[Problem] = []
        self.on_swap: Callable[[], None] | None = None  # called after every swap (main.py publishes the default)
        self._served: list[Served] = []  # default first
        self._names: dict[str, Served] = {}  # card names and aliases
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sne-forward")
        self._parse_slots = asyncio.Semaphore(settings.parse_workers)  # shared: SNE_PARSE_WORKERS per process
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._stopped = False

    # ----------------------------------------------------------------------------------- lookups
    @property
    def default(self) -> Served:
        return self._served[0]

    @property
    def served(self) -> list[Served]:
        return list(self._served)

    def aliases(self, served: Served) -> list[str]:
        return [n for n, s in self._names.items() if s is served and n != served.name]

    def resolve(self, name: str | None) -> Served:
        """The predictor called `name` (card name or alias); the default for None; 404 for anything else."""
        if not name:
            return self.default
        served = self._names.get(name)
        if served is None:
            known = ", ".join(sorted(self._names))
            raise APIError(404, Reason.unknown_predictor, f"no predictor named {name!r}; known: {known}")
        return served

    @asynccontextmanager
    async def lease(self, name: str | None) -> AsyncIterator[Served]:
        """Hold the predictor `name` for the duration of a request: a reload cannot stop it meanwhile."""
        served = self.resolve(name)
        served.leases += 1
        served.idle.clear()
        try:
            yield served
        finally:
            served.leases -= 1
            if served.leases == 0:
                served.idle.set()

    # ----------------------------------------------------------------------------------- lifecycle
    async def start(self) -> ReloadResult:
        """First scan; raises when the default predictor cannot be loaded (other folders only warn)."""
        return await self.reload()

    async def reload(self) -> ReloadResult:
        """Rescan, load new/changed predictors, swap, retire the replaced ones (one reload at a time)."""
        async with self._lock:
            if self._stopped:
                raise APIError(503, Reason.shutting_down, "the service is shutting down")
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        found, problems = await anyio.to_thread.run_sync(sources.scan, self.settings)
        by_folder = {(s.source.is_default, s.source.folder): s for s in self._served}
        result = ReloadResult(problems=problems)
        # 1. what each source will serve: the running predictor (unchanged), a fresh load, or nothing
        chosen: list[tuple[Source, Served | Predictor]] = []
        for src in found:
            old = by_folder.get((src.is_default, src.folder))
            if old is not None and old.source.fingerprint == src.fingerprint:
                chosen.append((src, old))
                continue
            try:
                predictor = await anyio.to_thread.run_sync(
                    sources.load, src, self.device, self.autocast, self.settings.warmup
                )
            except Exception as e:  # any broken folder: reported, never fatal after start-up
                if src.is_default and not self._served:
                    raise  # nothing to serve without the default: fail start-up loudly
                problems.append(Problem(src.folder, sources.describe_failure(e)))
                if old is not None:  # keep answering with the version that worked
                    chosen.append((old.source, old))
                continue
            chosen.append((src, predictor))
        # 2. names: card names first (unique), then folder names and `default` as aliases where free
        accepted: list[tuple[Source, Served | Predictor]] = []
        owner: dict[str, str] = {}
        for src, item in chosen:
            card_name = item.name
            if card_name in owner:
                problems.append(Problem(src.folder, f"card name {card_name!r} is already served (folder "
                                                    f"{owner[card_name]!r}); give this predictor another name"))
                continue
            owner[card_name] = src.folder
            accepted.append((src, item))
        # 3. start workers for the fresh loads, then swap in one step
        served: list[Served] = []
        for src, item in accepted:
            if isinstance(item, Served):
                served.append(item)
                result.unchanged.append(item.name)
            else:
                served.append(await self._serve(src, item))
                result.loaded.append(item.name)
        names = {s.name: s for s in served}
        for s in served:
            for alias in ((DEFAULT_NAME, s.source.folder) if s.is_default else (s.source.folder,)):
                names.setdefault(alias, s)
        old_served, kept = self._served, set(served)
        self._served, self._names, self.problems = served, names, problems
        self._publish()
        for s in old_served:
            if s not in kept:
                if s.name not in names:
                    result.removed.append(s.name)
                self._retire(s)
        for p in problems:
            log.warning("predictor folder %s not served: %s", p.folder, p.error)
        log.info("serving %d predictor(s): %s (default %s)", len(served), ", ".join(s.name for s in served),
                 self.default.name)
        return result

    async def _serve(self, src: Source, predictor: Predictor) -> Served:
        s = self.settings
        worker = BatchWorker(
            predictor, max_batch_size=s.max_batch_size, max_batch_chunks=s.max_batch_chunks,
            max_wait_ms=s.max_wait_ms, queue_limit=s.queue_limit, autocast=self.autocast,
            retry_after_seconds=s.retry_after_seconds, executor=self._executor,
        )
        await worker.start()
        large = None  # the lane of checkpoints over SNE_LARGE_CHUNKS: one at a time, on its own thread
        if s.large_chunks > 0:
            large = BatchWorker(
                predictor, max_batch_size=1, max_wait_ms=0.0, queue_limit=s.large_queue_limit, autocast=self.autocast,
                retry_after_seconds=s.retry_after_seconds, name="sne-forward-large", depth_gauge=LARGE_QUEUE_DEPTH,
                limit_setting="SNE_LARGE_QUEUE_LIMIT",
            )
            await large.start()
        service = EncodeService(predictor, worker, self.cache, s, large_worker=large, parse_slots=self._parse_slots)
        served = Served(src, predictor, worker, service)
        served.idle.set()
        if not predictor.trained:
            log.warning("serving an UNTRAINED predictor %s: its predictions carry no information", predictor.name)
        return served

    def _publish(self) -> None:
        PREDICTOR_INFO.clear()
        precision = "fp32" if self.autocast is None else self.settings.precision
        for s in self._served:
            PREDICTOR_INFO.labels(predictor=s.name).info({
                "name": s.name, "version": s.predictor.version, "trained": str(s.predictor.trained).lower(),
                "default": str(s.is_default).lower(), "device": str(self.device), "precision": precision,
            })
        if self.on_swap is not None:
            self.on_swap()

    def _retire(self, served: Served) -> None:
        task = asyncio.create_task(self._stop_when_idle(served), name=f"retire-{served.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _stop_when_idle(self, served: Served, timeout: float | None = None) -> None:
        """Wait for the requests holding `served` (no new ones can: it is out of the name table), then let
        its worker finish what is queued and stop."""
        timeout = self.settings.shutdown_timeout_seconds if timeout is None else timeout
        try:
            await asyncio.wait_for(served.idle.wait(), timeout)
        except TimeoutError:
            log.warning("predictor %s still had %d request(s) after %.0fs; stopping it", served.name,
                        served.leases, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for w in served.lanes:
            w.drain()
        await served.service.drain(timeout)
        for w in served.lanes:
            await w.stop(max(0.0, deadline - loop.time()))
        if served.name not in self._names:  # gone for good: drop its queue-depth series
            for gauge in (QUEUE_DEPTH, LARGE_QUEUE_DEPTH):
                try:
                    gauge.remove(served.name)
                except KeyError:
                    pass
        log.info("retired predictor %s %s", served.name, served.predictor.version)

    async def stop(self, timeout: float) -> None:
        """Shutdown: every worker finishes what is queued and in flight (within `timeout`), then stops."""
        async with self._lock:
            self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for s in self._served:
            for w in s.lanes:
                w.drain()
        for s in self._served:  # in turn, not gathered: the first stops taking uploads before anything yields
            await s.service.drain(max(0.0, deadline - loop.time()))
        remaining = max(0.0, deadline - loop.time())
        await asyncio.gather(*(w.stop(remaining) for s in self._served for w in s.lanes))
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=max(0.1, deadline - loop.time()))
        self._executor.shutdown(wait=False, cancel_futures=True)
