"""`real_checkpoints --service`: every real-sized checkpoint POSTed to a live `sne serve`, streamed from disk.

Issue 12 asks that each of them answers 200 with the upload limit raised to fit it. One server runs for all
of them (`python -m app.cli serve` in a subprocess, SNE_MAX_UPLOAD_BYTES above the largest file, parse and
encode timeouts raised for a 2-core CPU, torch threads from OMP_NUM_THREADS); each file goes up as a raw
`application/octet-stream` body read in 1 MiB blocks, so the client never holds a checkpoint in memory.
The server's peak RSS is its VmHWM, read after each request (a running peak: checkpoints go small to large).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.serving import server

BLOCK = 1 << 20


def _vm_kb(pid: int, field: str) -> int | None:
    """A `Vm*` line of /proc/<pid>/status in kB (None once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            yield block


def run_service(paths: dict[str, Path], timeout_s: float = 300.0) -> None:
    """POST each checkpoint once to one server and print a markdown table of what came back."""
    max_upload = max(4 << 30, max(p.stat().st_size for p in paths.values()) + (1 << 20))
    limit = str(timeout_s)
    env = {"SNE_MAX_UPLOAD_BYTES": str(max_upload), "SNE_TORCH_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "SNE_PARSE_TIMEOUT_SECONDS": limit, "SNE_ENCODE_TIMEOUT_SECONDS": limit, "SNE_BODY_TIMEOUT_SECONDS": limit,
           "SNE_OVERLAP_READS": os.environ.get("SNE_OVERLAP_READS", "true")}  # the one setting taken from the caller
    print(f"## Real checkpoints through the service (`sne serve`, SNE_MAX_UPLOAD_BYTES={max_upload}, "
          f"SNE_TORCH_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}, SNE_OVERLAP_READS={env['SNE_OVERLAP_READS']}, "
          f"parse/encode/body timeouts {timeout_s:.0f} s)")
    print("Each file streamed from disk as `application/octet-stream`; seconds are the whole request, upload included;")
    print("parse and forward are the server's own `timings` (the rest is the upload: receiving, hashing, spooling);")
    print("server peak RSS is its VmHWM after that request (a running peak over the run).\n")
    print("| checkpoint | size MB | HTTP | seconds | parse s | forward s | layers | chunks sampled / chunks "
          "| predicted accuracy | OOD flag | server peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    with server(env) as (url, proc), httpx.Client(base_url=url, timeout=httpx.Timeout(3 * timeout_s, connect=10)) as client:
        for name, path in paths.items():
            size = path.stat().st_size
            t = time.perf_counter()
            r = client.post("/v1/encode", content=_blocks(path), headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
            secs = time.perf_counter() - t
            hwm = _vm_kb(proc.pid, "VmHWM")
            rss = f"{hwm / 1024:.0f}" if hwm is not None else "n/a"
            if r.status_code == 200:
                body = r.json()
                layers = body["layers"]
                sampled = sum(x["chunks_sampled"] for x in layers)
                total = sum(x["chunks"] for x in layers)
                tm = body["timings"]
                print(f"| {name} | {size / 1e6:.1f} | 200 | {secs:.1f} | {tm['parse_ms'] / 1e3:.1f} | "
                      f"{tm['encode_ms'] / 1e3:.1f} | {len(layers)} | {sampled:,} / {total:,} | "
                      f"{body['predicted_accuracy']:.4f} | {body['ood']['flag']} | {rss} |", flush=True)
            else:
                failures += 1
                print(f"| {name} | {size / 1e6:.1f} | {r.status_code} | {secs:.1f} | n/a | n/a | n/a | n/a | n/a | n/a | {rss} |",
                      flush=True)
                print(f"  {name}: {r.text[:500]}", file=sys.stderr)
        hwm = _vm_kb(proc.pid, "VmHWM")  # read before the server stops
        rss_now = _vm_kb(proc.pid, "VmRSS")
    print(f"\nServer after the run: peak RSS (VmHWM) {fmt_mb(hwm)} MB, RSS kept {fmt_mb(rss_now)} MB; "
          f"{len(paths) - failures} of {len(paths)} answered 200.")


def fmt_mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.0f}"
