"""End-to-end service benchmark over real HTTP on loopback (figures are measured, not asserted).

1. Throughput at 1, 8 and 32 concurrent clients, dynamic batching on (`SNE_MAX_BATCH_SIZE=32`) against
   off (`SNE_MAX_BATCH_SIZE=1`). Two uvicorn servers run side by side and each concurrency level is measured
   on both back to back, so load drift on a shared machine hits both alike. Every request uploads a
   checkpoint no one uploaded before (the paper's Arch1 CNN, a new seed each), so the encoder always runs.
2. Latency of a cache hit against a cold encode (one client, sequential requests): cold = a new
   checkpoint each time, hit = the same already-cached checkpoint again; with the in-process LRU, and with
   Redis when one answers at `--redis-url`.

Run:  .venv/bin/python -m benchmarks.service
      .venv/bin/python -m benchmarks.service --requests 128 --clients 1,8,32 --predictor PATH --device cuda
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import torch

from benchmarks.serving import checkpoint_source, server

new_checkpoint = checkpoint_source(10_000)  # a checkpoint never sent before, on each call


def metric(text: str, name: str) -> float:
    """Sum of the samples of `name` over all its label sets (e.g. one per predictor)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


async def drive(url: str, blobs: list[bytes], clients: int) -> dict:
    """Send `blobs` with `clients` concurrent clients; throughput, latency p50 and the mean batch size."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        m0 = (await client.get("/metrics")).text
        queue = list(reversed(blobs))
        latencies: list[float] = []
        statuses: list[int] = []

        async def one_client() -> None:
            while queue:
                data = queue.pop()
                t = time.perf_counter()
                r = await client.post("/v1/encode", content=data, headers={"Content-Type": "application/octet-stream"})
                latencies.append(time.perf_counter() - t)
                statuses.append(r.status_code)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
        m1 = (await client.get("/metrics")).text
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed (statuses {sorted(set(bad))})")
    batches = metric(m1, "sne_batch_size_count") - metric(m0, "sne_batch_size_count")
    ckpts = metric(m1, "sne_batch_size_sum") - metric(m0, "sne_batch_size_sum")
    return {
        "rps": len(blobs) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "mean_batch": ckpts / batches if batches else float("nan"),
    }


async def sequential_p50(url: str, blobs: list[bytes]) -> tuple[float, list[bool]]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        lat, cached = [], []
        for data in blobs:
            t = time.perf_counter()
            r = await client.post("/v1/encode", content=data, headers={"Content-Type": "application/octet-stream"})
            lat.append(time.perf_counter() - t)
            r.raise_for_status()
            cached.append(r.json()["cached"])
    return statistics.median(lat) * 1000, cached


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def cache_latency(url: str, cold_n: int, hit_n: int) -> dict:
    cold_p50, cold_cached = asyncio.run(sequential_p50(url, [new_checkpoint() for _ in range(cold_n)]))
    same = new_checkpoint()
    asyncio.run(sequential_p50(url, [same]))  # now cached
    hit_p50, hit_cached = asyncio.run(sequential_p50(url, [same] * hit_n))
    assert not any(cold_cached) and all(hit_cached)
    return {"cold_p50_ms": cold_p50, "hit_p50_ms": hit_p50, "speedup": cold_p50 / hit_p50}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level and configuration")
    ap.add_argument("--clients", default="1,8,32", help="comma list of concurrent client counts")
    ap.add_argument("--max-batch-size", type=int, default=32, help="SNE_MAX_BATCH_SIZE of the batching server")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="SNE_MAX_WAIT_MS of both servers")
    ap.add_argument("--device", default="auto", help="SNE_DEVICE")
    ap.add_argument("--predictor", default=None, help="SNE_PREDICTOR_PATH (default: the shipped/untrained one)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="Redis for the cache-hit figure ('' to skip)")
    ap.add_argument("--cold", type=int, default=20, help="cold encodes for the latency figure")
    ap.add_argument("--hits", type=int, default=200, help="cache hits for the latency figure")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]

    common = {"SNE_DEVICE": args.device, "SNE_MAX_WAIT_MS": str(args.max_wait_ms), "SNE_QUEUE_LIMIT": "1024"}
    if args.predictor:
        common["SNE_PREDICTOR_PATH"] = args.predictor
    print("command:", shlex.join([Path(sys.executable).name, "-m", "benchmarks.service", *(argv or sys.argv[1:])]))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")

    rows = []
    with server({**common, "SNE_MAX_BATCH_SIZE": str(args.max_batch_size)}) as (on, _), \
            server({**common, "SNE_MAX_BATCH_SIZE": "1"}) as (off, _):
        with httpx.Client() as c:
            card = c.get(on + "/v1/predictor").json()
        print(f"predictor: {card['name']} {card['version']} (trained={card.get('trained')}, "
              f"config {card['config'].get('name')}), checkpoint: Arch1 CNN (4 layers, 4,970 parameters)")
        for clients in levels:
            n = max(args.requests, 2 * clients)
            asyncio.run(drive(on, [new_checkpoint() for _ in range(clients)], clients))  # warm connections
            asyncio.run(drive(off, [new_checkpoint() for _ in range(clients)], clients))
            r_on = asyncio.run(drive(on, [new_checkpoint() for _ in range(n)], clients))
            r_off = asyncio.run(drive(off, [new_checkpoint() for _ in range(n)], clients))
            rows.append((clients, n, r_on, r_off))
            print(f"  {clients:>3} clients: batched {r_on['rps']:.1f} req/s (mean batch {r_on['mean_batch']:.1f}), "
                  f"max_batch_size=1 {r_off['rps']:.1f} req/s", flush=True)
        lru = cache_latency(on, args.cold, args.hits)

    red = None
    if args.redis_url and redis_answers(args.redis_url):
        prefix = f"sne-bench-{uuid.uuid4().hex[:8]}:"
        with server({**common, "SNE_REDIS_URL": args.redis_url, "SNE_CACHE_PREFIX": prefix}) as (url, _):
            red = cache_latency(url, args.cold, args.hits)
        import redis

        r = redis.Redis.from_url(args.redis_url)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)

    print("\n### Throughput (requests/s, every request a new checkpoint)\n")
    print("| clients | requests | batching on (max_batch_size="
          f"{args.max_batch_size}) | mean batch | max_batch_size=1 | speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients, n, a, b in rows:
        print(f"| {clients} | {n} | {a['rps']:.1f} | {a['mean_batch']:.1f} | {b['rps']:.1f} | {a['rps'] / b['rps']:.2f}× |")
    print("\n### Cache hit vs cold encode (one client, p50 of sequential requests)\n")
    print("| cache | cold encode p50 | cache hit p50 | hit is faster by |")
    print("| --- | ---: | ---: | ---: |")
    for name, res in (("in-process LRU", lru), ("Redis", red)):
        if res is not None:
            print(f"| {name} | {res['cold_p50_ms']:.1f} ms | {res['hit_p50_ms']:.2f} ms | {res['speedup']:.0f}× |")


if __name__ == "__main__":
    main()
