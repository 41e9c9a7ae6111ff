"""The compiled statistics pass per value, against the memory's own speed, measured in one run.

For one Llama-MLP-shaped bf16 part (5632 x 2048, 23 MB: larger than the caches) it times, best of `--repeat`:
  - a plain compiled sum of the stored 16-bit values (one and two threads): what one read of memory costs;
  - the first pass (moments, extremes, the first power-iteration dot products and `A^T (A x)` share);
  - a power-iteration pass (dot products and `A^T (A x)`), as the three further passes of a part run;
and prints nanoseconds a value and each pass's ratio to the one-thread read. Also the same for fp16 and float32,
and, with `--checkpoint`, for that file's largest tensor as the encoder reads it (mapped from the page cache).

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.stats_pass [--shape 5632 2048] [--repeat 5]
[--checkpoint benchmarks/out/ckpts/llama_1b_bf16.safetensors]`.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import torch

from benchmarks.encoder import best_of
from benchmarks.real_checkpoints import into_page_cache
from model import stats_pass
from model.admission import Limits
from model.checkpoint import CheckpointFile


@numba.njit(nogil=True, fastmath={"reassoc"})
def _sum16(m: np.ndarray, a: int, b: int) -> int:
    t = np.uint32(0)
    for i in range(a, b):
        for j in range(m.shape[1]):
            t += np.uint32(m[i, j])
    return t


@numba.njit(nogil=True, fastmath={"reassoc"})
def _sum32(m: np.ndarray, a: int, b: int) -> float:
    t = np.float32(0.0)
    for i in range(a, b):
        for j in range(m.shape[1]):
            t += m[i, j]
    return t


def best(fn: Callable[[], object], repeat: int) -> float:
    """`best_of` after one warm call (the minimum: the least disturbed run on a shared machine)."""
    fn()
    return best_of(fn, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs=2, type=int, default=[5632, 2048])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--checkpoint", type=Path, help="also time this file's largest tensor, mapped")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stats_pass.warm_up()
    r, c = args.shape
    pool = ThreadPoolExecutor(2)
    print(f"## Statistics pass per value, one {r} x {c} part (1 thread unless said)\n")
    print("| dtype | read (plain sum) | read, 2 threads | first pass | power pass | first / read | power / read |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = (torch.randn(r, c, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
        print(row(stats_pass.as_rows(t), dtype, pool, args.repeat))
    if args.checkpoint:
        into_page_cache(args.checkpoint)  # as an upload's spool file is
        with CheckpointFile(args.checkpoint, Limits.unbudgeted()) as ck:
            ref = max(ck.header.tensors.values(), key=lambda t: t.numel)
            t = ck.tensor(ref)
            m = t.reshape(t.shape[0], -1)
            label = f"{str(t.dtype).removeprefix('torch.')}, mapped `{ref.name}` {tuple(m.shape)}"
            print(row(stats_pass.as_rows(m), t.dtype, pool, args.repeat, label))
            del t, m
            ck.release(ref)


def row(rows: np.ndarray, dtype: torch.dtype, pool: ThreadPoolExecutor, repeat: int, label: str = "") -> str:
    """One table row: the plain read (one and two threads), the first and a power pass, per value."""
    r, c = rows.shape
    plain = _sum32 if dtype == torch.float32 else _sum16
    x = np.full(c, 1.0 / np.sqrt(c))

    def two() -> None:
        list(pool.map(lambda ab: plain(rows, *ab), [(0, r // 2), (r // 2, r)]))

    def a_pass(moments: bool) -> None:
        stats_pass.row_pass(rows, dtype, x, 50.0, 0.0, given=False, moments=moments, want_acc=True)

    read = best(lambda: plain(rows, 0, r), repeat)
    read2 = best(two, repeat)
    first = best(lambda: a_pass(True), repeat)
    power = best(lambda: a_pass(False), repeat)
    ns = [v / rows.size * 1e9 for v in (read, read2, first, power)]
    return (f"| {label or str(dtype).removeprefix('torch.')} | {ns[0]:.3f} ns | {ns[1]:.3f} ns | {ns[2]:.3f} ns | "
            f"{ns[3]:.3f} ns | {first / read:.1f}x | {power / read:.1f}x |")


if __name__ == "__main__":
    main()
