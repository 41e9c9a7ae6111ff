"""The result cache: Redis when `SNE_REDIS_URL` is set, an in-process LRU otherwise.

Key: `<SNE_CACHE_PREFIX><predictor name>:<predictor version>:<sha256 of the upload>`, so neither another
predictor nor a new version of the same one ever serves an old answer. Value: a compact binary record of an `Encoding` (`pack_encoding`): a magic tag, a small JSON header
with the scalars and the layer table, then the network embedding and the layer embeddings as raw little-endian float32 —
about 4 bytes a float instead of ~20 as JSON text.

Redis failures never fail a request: the lookup counts as a miss, `sne_cache_errors_total` goes up, and
Redis is skipped for a backoff (`SNE_REDIS_RETRY_SECONDS`, doubling per failed retry, at most 60 s)
after which the next call tries again. Calls that were already in flight when a failure was counted fail
with the same outage and do not double the backoff again: 100 concurrent timeouts cost one step, not 100
(redis-py reconnects by itself). Every lookup counts as exactly one hit or one miss (`sne_cache_hits_total` / `sne_cache_misses_total`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from typing import Protocol, runtime_checkable

import cachetools
import numpy as np
from redis.exceptions import RedisError

from app.encoding import Encoding
from app.metrics import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES
from app.parsing import LayerRow
from app.settings import Settings
from model.predictor import Prediction

log = logging.getLogger("sne.cache")

MAGIC = b"SNE2"  # SNE2: the header carries the sha256
_HEAD = struct.Struct("<4sI")  # magic, JSON header length
MAX_BACKOFF_SECONDS = 60.0
#: what a Redis call can fail with: its own errors, the socket's, our deadline
REDIS_FAILURES = (RedisError, OSError, TimeoutError)


# --------------------------------------------------------------------------------------------- codec


def cache_key(prefix: str, predictor_name: str, predictor_version: str, sha256: str) -> str:
    """Name AND version: two predictors never share an answer, even when their cards carry the same version."""
    return f"{prefix}{predictor_name}:{predictor_version}:{sha256}"


def pack_encoding(enc: Encoding) -> bytes:
    """`Encoding` -> bytes: magic, header length, JSON header, float32 embedding, float32 layer embeddings.
    (Not stored: `cached` and the stage times, which describe one request, not the checkpoint.)"""
    r = enc.prediction
    emb = np.ascontiguousarray(r.embedding, dtype="<f4")  # [E]
    lemb = np.ascontiguousarray(r.layer_embeddings, dtype="<f4")  # [L, H]
    header = {
        "sha": enc.sha256,
        "acc": r.accuracy,
        "gap": r.gap,
        "low": r.low,
        "high": r.high,
        "cov": r.coverage,
        "ood": r.ood_score,
        "flag": r.ood_flag,
        "arch": r.unseen_architecture,
        "emb": int(emb.shape[0]),
        "lemb": list(lemb.shape),
        "layers": [[r.name, r.type, r.level, r.shape, r.parameters, r.chunks, r.chunks_sampled] for r in enc.layers],
        "skipped": enc.skipped,
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_HEAD.pack(MAGIC, len(raw)), raw, emb.tobytes(), lemb.tobytes()))


def unpack_encoding(data: bytes) -> Encoding:
    """Inverse of `pack_encoding` (with `cached=True`, zero stage times); `ValueError` when the bytes are
    not such a record."""
    try:
        magic, n = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise ValueError("not an SNE cache record")
        h = json.loads(data[_HEAD.size : _HEAD.size + n])
        off = _HEAD.size + n
        e = int(h["emb"])
        rows, cols = (int(x) for x in h["lemb"])
        if len(data) != off + 4 * (e + rows * cols):
            raise ValueError("cache record has the wrong length")
        emb = np.frombuffer(data, dtype="<f4", count=e, offset=off).astype(np.float32)
        lemb = np.frombuffer(data, dtype="<f4", count=rows * cols, offset=off + 4 * e).astype(np.float32)
        prediction = Prediction(
            embedding=emb,
            layer_embeddings=lemb.reshape(rows, cols),
            accuracy=float(h["acc"]),
            gap=h["gap"],
            low=float(h["low"]),
            high=float(h["high"]),
            coverage=h["cov"],
            ood_score=h["ood"],
            ood_flag=bool(h["flag"]),
            unseen_architecture=bool(h.get("arch", False)),
        )
        return Encoding(
            sha256=str(h["sha"]),
            prediction=prediction,
            layers=[LayerRow(a, b, c, list(d), p, q, s) for a, b, c, d, p, q, s in h["layers"]],
            skipped=list(h.get("skipped", [])),
            cached=True,
        )
    except ValueError:
        raise
    except (struct.error, KeyError, TypeError, IndexError) as e:  # a corrupt record
        raise ValueError(f"corrupt cache record: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------- caches


@runtime_checkable
class ResultCache(Protocol):
    """What the service needs from a cache. Implementations never raise on get/set."""

    backend: str

    async def get(self, key: str) -> Encoding | None: ...

    async def set(self, key: str, encoding: Encoding) -> None: ...

    async def state(self) -> str:
        """`up`, `down` or `in-process` (for /readyz)."""
        ...

    async def close(self) -> None: ...


class LRUCache:
    """In-process LRU of packed records, bounded by bytes (`SNE_LRU_BYTES`) and by entries (`SNE_LRU_SIZE`).

    By bytes because entries differ by orders of magnitude (the layer table grows with the checkpoint, names
    included): 1,024 entries of long-named checkpoints were a gigabyte. A `cachetools.LRUCache` weighing each
    packed record by its length; a record larger than the whole budget is not kept. 0 in either bound turns
    caching off.
    """

    backend = "lru"

    def __init__(self, max_entries: int, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(maxsize=max(1, max_bytes), getsizeof=len)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes held (the sum of the packed records' lengths)."""
        return int(self._data.currsize)

    async def get(self, key: str) -> Encoding | None:
        raw = self._data.get(key)  # a hit moves the key to the most recently used end
        if raw is None:
            CACHE_MISSES.inc()
            return None
        CACHE_HITS.inc()
        return unpack_encoding(raw)

    async def set(self, key: str, encoding: Encoding) -> None:
        if self.max_entries <= 0 or self.max_bytes <= 0:
            return
        record = pack_encoding(encoding)
        if len(record) > self.max_bytes:
            log.info("not caching %s: its record (%d bytes) exceeds SNE_LRU_BYTES", key, len(record))
            return
        self._data[key] = record  # evicts least recently used records until it fits
        while len(self._data) > self.max_entries:
            self._data.popitem()  # the least recently used

    async def state(self) -> str:
        return "in-process"

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Shared cache in Redis (`redis.asyncio`), with a TTL, short timeouts and a backoff when Redis fails."""

    backend = "redis"

    def __init__(self, url: str, ttl_seconds: int, timeout: float = 0.5, retry_seconds: float = 5.0) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.ttl = ttl_seconds
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        # No retries inside redis-py: a down Redis must cost one fast failure, then the backoff below.
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._failures = 0  # consecutive outages (failed retries), not failed calls: see _failed
        self._failed_at = 0.0
        self._down_until = 0.0
        self.last_error: str | None = None

    @property
    def down(self) -> bool:
        return self._failures > 0

    def _skipping(self) -> bool:
        return self._failures > 0 and time.monotonic() < self._down_until

    def _failed(self, op: str, e: BaseException, started: float) -> None:
        CACHE_ERRORS.inc()
        if self._failures and started < self._failed_at:
            return  # began before the last counted failure: the same outage, already counted and backed off
        self._failed_at = time.monotonic()
        self._failures += 1
        backoff = min(MAX_BACKOFF_SECONDS, self.retry_seconds * 2 ** (self._failures - 1))
        self._down_until = time.monotonic() + backoff
        self.last_error = f"{type(e).__name__}: {e}"
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "redis %s failed (%s); answering without the cache, retrying in %.1fs", op, self.last_error, backoff)

    def _succeeded(self) -> None:
        if self._failures:
            log.warning("redis at %s answers again; cache back on", self.url)
        self._failures = 0
        self._down_until = 0.0
        self.last_error = None

    async def _call(self, op: str, coro_fn, *args, **kwargs):
        """Run one Redis command with a hard deadline; (ok, value)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout * 2 + 0.1):
                value = await coro_fn(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except REDIS_FAILURES as e:  # ConnectionError, TimeoutError, ResponseError, OSError, ...
            self._failed(op, e, started)
            return False, None
        self._succeeded()
        return True, value

    async def get(self, key: str) -> Encoding | None:
        if self._skipping():
            CACHE_MISSES.inc()
            return None
        ok, raw = await self._call("GET", self._client.get, key)
        if not ok or raw is None:
            CACHE_MISSES.inc()
            return None
        try:
            result = unpack_encoding(raw)
        except ValueError as e:
            CACHE_ERRORS.inc()
            CACHE_MISSES.inc()
            log.warning("ignoring unreadable cache entry %s: %s", key, e)
            return None
        CACHE_HITS.inc()
        return result

    async def set(self, key: str, encoding: Encoding) -> None:
        if self._skipping():
            return
        await self._call("SET", self._client.set, key, pack_encoding(encoding), ex=self.ttl if self.ttl > 0 else None)

    async def state(self) -> str:
        """Ping Redis (also the way back after an outage); never counts as a cache error."""
        try:
            async with asyncio.timeout(self.timeout * 2 + 0.1):
                await self._client.ping()
        except asyncio.CancelledError:
            raise
        except REDIS_FAILURES as e:
            self.last_error = f"{type(e).__name__}: {e}"
            return "down"
        self._succeeded()
        return "up"

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except REDIS_FAILURES as e:  # closing a broken connection must not break shutdown
            log.debug("closing redis: %s", e)


def make_cache(settings: Settings) -> ResultCache:
    """Redis when `redis_url` is set, else the in-process LRU."""
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            settings.cache_ttl_seconds,
            timeout=settings.redis_timeout_seconds,
            retry_seconds=settings.redis_retry_seconds,
        )
    return LRUCache(settings.lru_size, settings.lru_bytes)
