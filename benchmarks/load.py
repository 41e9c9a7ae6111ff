"""Load, faults and fairness over real HTTP (figures are measured, not asserted).

1. Load: 1, 8 and 32 concurrent clients, each request a checkpoint never uploaded before; prints clients,
   throughput, latency p50/p95/p99, 503s and lost requests (no answer, or any status but 200/503: must be 0).
2. Redis faults: the same load at 8 clients against a private `redis-server`, once untouched and once paused
   (SIGSTOP) for `--pause` seconds and then killed (SIGKILL) and restarted.
3. Fairness: a small upload's p50/p95 alone, and while a pathological upload encodes (4 layers of 65,535
   chunks; 100,000 tiny tensors), each with the settings given by `--fair-env` and by `--unfair-env`.

The server is `sne serve`'s: uvicorn with `app.server_config.uvicorn_options`, in a subprocess.

Run:  .venv/bin/python -m benchmarks.load
      .venv/bin/python -m benchmarks.load --clients 1,8 --requests 64 --skip-fairness
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch

from benchmarks.serving import checkpoint_source, free_port, server

new_checkpoint = checkpoint_source(20_000)  # a checkpoint never sent before, on each call


def raw_safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def wide_layers(layers: int = 4, chunks: int = 65_535, c: int = 16) -> bytes:
    """`layers` 1-D weights of `chunks * c` values each: the issue's 4 x 65,535 chunks (16.8 MB)."""
    n = chunks * c
    header = {f"l{i}.weight": {"dtype": "F32", "shape": [n], "data_offsets": [4 * n * i, 4 * n * (i + 1)]}
              for i in range(layers)}
    return raw_safetensors(header, np.random.default_rng(0).standard_normal(layers * n).astype("<f4").tobytes())


def tiny_tensors(n: int = 100_000) -> bytes:
    """`n` one-value layers (7.8 MB, mostly header)."""
    header = {f"l{i}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
    return raw_safetensors(header, np.ones(n, dtype="<f4").tobytes())


class RedisServer:
    """A private `redis-server` on a free port, to pause, kill and restart."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.cmd = [binary, "--port", str(free_port()), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.url = f"redis://127.0.0.1:{self.cmd[2]}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    unavailable: int = 0
    lost: int = 0
    wall: float = 0.0

    def row(self, label: str, clients: int) -> str:
        q = np.quantile(np.array(self.latencies) * 1000, [0.5, 0.95, 0.99]) if self.latencies else [float("nan")] * 3
        n = self.ok + self.unavailable + self.lost
        return (f"| {label} | {clients} | {n} | {self.ok / self.wall:.1f} | {q[0]:.0f} | {q[1]:.0f} | {q[2]:.0f} | "
                f"{self.unavailable} | {self.lost} |")


async def post(client: httpx.AsyncClient, blob: bytes, run: Run) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/encode", content=blob, headers={"Content-Type": "application/octet-stream"})
    except httpx.HTTPError:
        run.lost += 1
        return
    run.latencies.append(time.perf_counter() - t0)
    if r.status_code == 200:
        run.ok += 1
    elif r.status_code == 503:
        run.unavailable += 1
    else:
        run.lost += 1


async def load(url: str, clients: int, n: int, fault=None) -> Run:
    """`n` new checkpoints from `clients` concurrent clients; `fault(progress)` runs alongside when given."""
    blobs = [new_checkpoint() for _ in range(n)]
    run = Run()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        queue = list(reversed(blobs))

        async def one() -> None:
            while queue:
                await post(client, queue.pop(), run)

        t0 = time.perf_counter()
        injector = None if fault is None else asyncio.create_task(fault(lambda: 1 - len(queue) / n))
        await asyncio.gather(*(one() for _ in range(clients)))
        run.wall = time.perf_counter() - t0
        if injector is not None:
            await injector  # (Redis restarted) before the next run
    return run


def redis_fault(redis: RedisServer, pause: float):
    """At a third of the run, SIGSTOP Redis for `pause` s; at two thirds, SIGKILL it and restart it."""

    async def fault(progress) -> None:
        while progress() < 1 / 3:
            await asyncio.sleep(0.02)
        os.kill(redis.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(pause)
        os.kill(redis.proc.pid, signal.SIGCONT)
        while progress() < 2 / 3:
            await asyncio.sleep(0.02)
        redis.proc.kill()
        redis.proc.wait()
        await asyncio.sleep(pause)
        redis.start()

    return fault


async def small_while_big(
    url: str, big: bytes | None, small_n: int, interval: float = 0.25
) -> tuple[list[float], float, str, list[str]]:
    """Small uploads started every `interval` s (at least `small_n`, and until `big` is answered), so the
    latencies sample the whole time the big one is served; returns them, the big one's time and status,
    and what went wrong with small ones (a status other than 200, or a transport error)."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        lat: list[float] = []
        failed: list[str] = []

        async def small() -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/encode", content=new_checkpoint())
            except httpx.HTTPError as e:
                failed.append(type(e).__name__)
                return
            if r.status_code != 200:
                failed.append(str(r.status_code))
                return
            lat.append(time.perf_counter() - t0)

        async def big_one() -> tuple[str, float]:
            try:
                r = await client.post("/v1/encode", content=big)
            except httpx.HTTPError as e:
                return type(e).__name__, time.perf_counter() - started
            return str(r.status_code), time.perf_counter() - started

        started = time.perf_counter()
        big_task = None if big is None else asyncio.create_task(big_one())
        smalls = []
        while len(smalls) < small_n or (big_task is not None and not big_task.done()):
            smalls.append(asyncio.create_task(small()))
            await asyncio.sleep(interval)  # a steady arrival rate, not an ordering
        await asyncio.gather(*smalls)
        if big_task is None:
            return lat, 0.0, "-", failed
        status, took = await big_task
        return lat, took, status, failed


def env_arg(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,8,32", help="comma list of concurrent client counts")
    ap.add_argument("--requests", type=int, default=96, help="requests per load run")
    ap.add_argument("--pause", type=float, default=3.0, help="seconds Redis stays paused, and dead")
    ap.add_argument("--fault-requests", type=int, default=480, help="requests of each Redis run (long enough to "
                    "span both faults)")
    ap.add_argument("--small", type=int, default=20, help="small uploads per fairness run (at least)")
    ap.add_argument("--fair-env", default="", help="SNE_*=value,... of the fairness mechanism (on)")
    ap.add_argument("--unfair-env", default="", help="SNE_*=value,... with the mechanism off")
    ap.add_argument("--bigs", default="none,wide,tiny", help="big uploads: none, wide (4 x 65,535 chunks), tiny "
                    "(100,000 tensors)")
    ap.add_argument("--modes", default="on,off", help="fairness runs: `on` (--fair-env), `off` (--unfair-env)")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--skip-fairness", action="store_true")
    args = ap.parse_args(argv)
    base = {"SNE_DEVICE": "cpu", "SNE_TORCH_THREADS": "1", "SNE_QUEUE_LIMIT": "256"}
    print("command:", shlex.join([Path(sys.executable).name, "-m", "benchmarks.load", *(argv or sys.argv[1:])]))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; server: 1 torch thread, in a subprocess")
    header = ("| run | clients | requests | ok/s | p50 ms | p95 ms | p99 ms | 503s | lost |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    if not args.skip_load:
        print("\n### Load (every request a new checkpoint, in-process cache)\n")
        print(header, flush=True)
        with server(base) as (url, _):
            asyncio.run(load(url, 4, 8))  # warm
            for clients in (int(c) for c in args.clients.split(",")):
                run = asyncio.run(load(url, clients, max(args.requests, 2 * clients)))
                print(run.row("load", clients), flush=True)

    if not args.skip_redis:
        print(f"\n### Redis faults (8 clients; paused {args.pause:g} s at 1/3, killed + restarted at 2/3)\n")
        print(header, flush=True)
        for label, faulty in (("Redis, no fault", False), ("Redis paused, then killed", True)):
            redis = RedisServer()
            redis.start()
            try:
                env = {**base, "SNE_REDIS_URL": redis.url}
                with server(env) as (url, _):
                    asyncio.run(load(url, 4, 8))
                    n = args.fault_requests
                    run = asyncio.run(load(url, 8, n, redis_fault(redis, args.pause) if faulty else None))
                    print(run.row(label, 8), flush=True)
            finally:
                redis.stop()

    if not args.skip_fairness:
        print("\n### Fairness: a small upload (Arch1 CNN) alone and while a pathological one is served\n")
        print("| settings | big upload | big: status, s | small p50 ms | small p95 ms | small max ms | small ok | small failed |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |", flush=True)
        every = {"none": None, "wide": wide_layers, "tiny": tiny_tensors}
        names = {"none": "none", "wide": "4 x 65,535 chunks", "tiny": "100,000 tiny tensors"}
        bigs = {names[k]: (every[k]() if every[k] else None) for k in args.bigs.split(",")}
        modes = {"on": ("mechanism on", env_arg(args.fair_env)), "off": ("mechanism off", env_arg(args.unfair_env))}
        for label, extra in (modes[m] for m in args.modes.split(",")):
            with server({**base, **extra}) as (url, _):
                asyncio.run(small_while_big(url, None, 5))  # warm
                for name, big in bigs.items():
                    lat, took, status, failed = asyncio.run(small_while_big(url, big, args.small))
                    ms = np.array(lat) * 1000
                    print(f"| {label} {args.fair_env if 'on' in label else args.unfair_env} | {name} | "
                          f"{f'{status}, {took:.1f}' if big else '-'} | {statistics.median(ms):.0f} | "
                          f"{np.quantile(ms, 0.95):.0f} | {ms.max():.0f} | {len(ms)} | "
                          f"{len(failed)} {sorted(set(failed)) if failed else ''} |", flush=True)


if __name__ == "__main__":
    main()
