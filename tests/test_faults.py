"""Redis faults under load: a private `redis-server` is paused (SIGSTOP) and killed (SIGKILL) while clients
keep uploading through the real app. No request may fail, latency stays bounded, and the cache comes back.

The Redis timeouts are shortened (0.2 s a call, 0.5 s back-off) so the test is quick; the bounds asserted
are stated in terms of them.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field

import pytest

from tests.conftest import PrivateRedis, distinct_ckpts, running_app, settings_for

pytestmark = pytest.mark.anyio
CLIENTS = 6
REDIS_TIMEOUT = 0.2
RETRY = 0.5
PAUSE = 2.0  # how long Redis stays stopped / dead
#: worst added latency of one request while Redis hangs: a GET and a SET, each cut at 2 * timeout + 0.1 s,
#: plus encode time on a busy 2-core CI box
LATENCY_BOUND = 2 * (2 * REDIS_TIMEOUT + 0.1) + 3.0
#: an outage of PAUSE s counts as one: retries at RETRY, 2 RETRY, 4 RETRY, ... after it began, so the cache is
#: back within about 2 * PAUSE of the restart (+ a pass over the blobs to refill it); before the fix each of
#: the concurrent failures doubled the back-off, up to its 60 s cap
RECOVERY_BOUND = 2 * PAUSE + 4.0


@dataclass
class Load:
    """Clients uploading in a loop; counts what came back."""

    blobs: list[bytes]
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cached: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def client(self, http, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            blob = self.blobs[(i + n * CLIENTS) % len(self.blobs)]
            n += 1
            t0 = time.perf_counter()
            r = await http.post("/v1/encode", content=blob)
            self.latencies.append(time.perf_counter() - t0)
            self.statuses.append(r.status_code)
            self.cached += r.status_code == 200 and r.json()["cached"]
            async with self.progress:
                self.progress.notify_all()

    async def wait_for(self, more: int) -> None:
        """Until `more` further requests have been answered."""
        target = len(self.statuses) + more
        async with self.progress:
            await self.progress.wait_for(lambda: len(self.statuses) >= target)


async def test_redis_paused_and_killed_under_load_fails_no_request(svc_predictor_dir) -> None:
    redis = PrivateRedis()
    redis.start()
    settings = settings_for(
        svc_predictor_dir, redis_url=redis.url, cache_prefix="fault:", redis_timeout_seconds=REDIS_TIMEOUT,
        redis_retry_seconds=RETRY, max_wait_ms=2.0,
    )
    load = Load(distinct_ckpts(24, start=500))
    try:
        async with running_app(settings) as http:
            clients = [asyncio.create_task(load.client(http, i)) for i in range(CLIENTS)]
            await load.wait_for(30)  # warm: the cache fills, repeats hit it

            before_pause = len(load.statuses)
            os.kill(redis.proc.pid, signal.SIGSTOP)  # hangs: every call waits for its timeout
            await asyncio.sleep(PAUSE)
            os.kill(redis.proc.pid, signal.SIGCONT)
            during_pause = len(load.statuses) - before_pause
            await load.wait_for(30)

            redis.proc.send_signal(signal.SIGKILL)  # gone: connections refused
            redis.proc.wait(10)
            await asyncio.sleep(PAUSE)
            redis.start()  # same port, empty
            restarted = time.monotonic()
            hits = load.cached
            while load.cached == hits:  # no /readyz here: its ping would end the back-off early
                assert time.monotonic() - restarted < RECOVERY_BOUND, "the cache stayed off after Redis came back"
                await load.wait_for(1)
            recovered = time.monotonic() - restarted
            load.stop.set()
            await asyncio.gather(*clients)
            assert (await http.get("/readyz")).json()["cache"]["state"] == "up"
    finally:
        if redis.proc is not None and redis.proc.poll() is None:
            os.kill(redis.proc.pid, signal.SIGCONT)
        redis.stop()
    assert during_pause >= CLIENTS, f"only {during_pause} requests answered in the {PAUSE} s Redis was paused"
    assert set(load.statuses) == {200}, f"failed requests: {[s for s in load.statuses if s != 200]}"
    assert max(load.latencies) < LATENCY_BOUND, f"slowest request {max(load.latencies):.2f} s"
    assert recovered < RECOVERY_BOUND
