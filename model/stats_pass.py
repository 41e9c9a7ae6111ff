"""The statistics' read pass as compiled loops: moments and the power iteration, straight from the mapped file.

`model.stats` needs, for every part, one pass for the moments and `POWER_ITERS` matrix-vector steps for the
spectral norm. Done with torch ops on 32 K blocks, that is a dozen kernel launches and temporaries per block
and a float32 copy of the part (1.8 ns a value; 4.2 s of a 1.1 B-parameter checkpoint's 5 s encode). Here each
pass is one numba loop over the part's rows that reads the stored dtype directly (bf16 by a shift, fp16 by a
table, float32 as is), so a pass costs about one read of the file. Rows go eight at a time: each row's dot
product (and, in the first pass, its moments) while it is in cache, then the eight rows' share of
`A^T (A x)` in one sweep, so `acc` is loaded and stored once per eight rows and one power-iteration step is
one pass, not two. A power pass converts as it reads and copies nothing (fp16 blocks go through the table
once, into float32 rows); the first pass loads each row into a float32 buffer and sums the moments there, in
one loop for every dtype. A bf16 part and its float32 upcast agree to float32 rounding (tested): the power
passes' loops are compiled per dtype and may sum in another order.

The rows are cut into `GROUPS` fixed groups whose partial sums are added in group order, so the result does
not depend on how many threads ran them; the loops release the GIL and the groups run on a thread pool of
`torch.get_num_threads()` workers (the calling thread's count: `model.overlap` reads on one).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numba
import numpy as np
import torch

GROUPS = 16  # row groups per pass: the unit of parallel work and of the (thread-count free) reduction
KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # dtypes read directly; others: model.stats
_F16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)  # fp16 bits -> float32
_FM = {"reassoc", "contract", "nsz", "arcp"}  # vectorised sums; NaN and Inf keep their meaning (no nnan/ninf)
VECTOR_ROW = 4096  # values a row when a vector is read
_NSUMS = 8  # per group: sum z, z^2, z^3, z^4, |y|; min z, max z; sum of squared row dots


def _compiled(fastmath: bool | set[str]) -> Callable[[Callable[..., Any]], Any]:
    """`numba.njit`, without the GIL, cached on disk where numba finds a writable place (the package's
    `__pycache__`, `NUMBA_CACHE_DIR` or `~/.cache/numba`); with none (a read-only image and home), compiled in
    each process instead of refusing to import."""

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return numba.njit(nogil=True, fastmath=fastmath, cache=True)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, fastmath=fastmath)(fn)

    return wrap


@_compiled(False)
def _key16(v):
    """The order key of a 16-bit float's bits `v` (int16): `v ^ ((v >> 15) & 0x7fff)` orders the floats as their
    values (integer min/max vectorise where float ones do not), and is its own inverse. Every step cast back:
    numba widens narrow integer arithmetic to int64, which does not vectorise (a 3x slower loop)."""
    return np.int16(v ^ np.int16(np.int16(v >> np.int16(15)) & np.int16(0x7FFF)))


@_compiled(False)
def _key32(v):
    """`_key16` for a float32's bits (int32)."""
    return np.int32(v ^ np.int32(np.int32(v >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@_compiled(_FM)
def _load(m, kind, lut, i, f, extremes):
    """Row `i` of `m` as float32 into `f`; with `extremes`, returns its min and max as float32, from integer
    order keys: for bf16 of the raw 16 bits in the loading loop, else of the loaded float32 bits (an integer
    min/max is exact in any order). The moments are then summed on `f` alone, in one loop for every dtype.
    NaN has no place in the keys' order, which the caller's sums detect (the part is not finite)."""
    c = m.shape[1]
    bits = f.view(np.uint32)
    if kind == 1:  # bfloat16: the upper half of a float32
        lo16, hi16 = np.int16(32767), np.int16(-32768)
        for j in range(c):
            u = m[i, j]
            bits[j] = np.uint32(u) << np.uint32(16)
            if extremes:
                k = _key16(np.int16(u))
                lo16 = np.int16(min(lo16, k))
                hi16 = np.int16(max(hi16, k))
        lo = np.int32(np.uint32(np.uint16(_key16(lo16))) << np.uint32(16))  # the key's own inverse, widened
        hi = np.int32(np.uint32(np.uint16(_key16(hi16))) << np.uint32(16))
        return np.int32(lo).view(np.float32), np.int32(hi).view(np.float32)
    if kind == 2:  # float16: looked up (the keys of the float32 bits after: in this loop, 1.6x slower)
        for j in range(c):
            f[j] = lut[np.intp(m[i, j])]
    else:
        for j in range(c):
            f[j] = m[i, j]
    if not extremes:
        return np.float32(0.0), np.float32(0.0)
    ib = f.view(np.int32)
    lo, hi = np.int32(2147483647), np.int32(-2147483648)
    for j in range(c):
        k32 = _key32(ib[j])
        lo = np.int32(min(lo, k32))
        hi = np.int32(max(hi, k32))
    return np.int32(_key32(lo)).view(np.float32), np.int32(_key32(hi)).view(np.float32)


@_compiled(_FM)
def _dot(f, x):
    """`f . x` summed in float32 (vectorised: fastmath reassociates)."""
    s = np.float32(0.0)
    for j in range(f.shape[0]):
        s += f[j] * x[j]
    return s


@_compiled(_FM)
def _at(m, kind, lut, i, j):
    """Value `(i, j)` of `m` as float32, converted as it is read (bf16 by a shift, fp16 by the table)."""
    if kind == 1:
        return np.uint32(np.uint32(m[i, j]) << np.uint32(16)).view(np.float32)
    if kind == 2:
        return lut[np.intp(m[i, j])]
    return np.float32(m[i, j])


@_compiled(_FM)
def _dot_raw(m, kind, lut, i, x):
    """`row_i . x` straight from `m`, converted as it is read (a power pass loads no row: it streams the part
    once). The same loop as `_dot` but for the conversion; compiled per dtype, so a bf16 part and its float32
    upcast may sum in another order (they agree to rounding, tested)."""
    s = np.float32(0.0)
    for j in range(m.shape[1]):
        s += _at(m, kind, lut, i, j) * x[j]
    return s


@_compiled(_FM)
def _moments(f, k, sz, out):
    """Sums of z, z^2, z^3, z^4 and |y| over the row `f` (y = f k the scaled value, z = y - sz) into `out[:5]`,
    in float32 and, where that overflowed, again in float64."""
    a1 = a2 = a3 = a4 = aa = np.float32(0.0)
    for j in range(f.shape[0]):
        y = f[j] * k
        aa += abs(y)
        z = y - sz
        z2 = z * z
        a1 += z
        a2 += z2
        a3 += z2 * z
        a4 += z2 * z2
    if not (math.isfinite(a1) and math.isfinite(a2) and math.isfinite(a3) and math.isfinite(a4)):
        d1 = d2 = d3 = d4 = 0.0  # float32 overflow of z^4 (or NaN/Inf): this row in float64
        for j in range(f.shape[0]):
            zd = np.float64(f[j] * k) - np.float64(sz)
            d1 += zd
            d2 += zd * zd
            d3 += zd * zd * zd
            d4 += zd * zd * zd * zd
        out[0], out[1], out[2], out[3] = d1, d2, d3, d4
    else:
        out[0], out[1], out[2], out[3] = a1, a2, a3, a4
    out[4] = aa


@_compiled(_FM)
def _axpy8(m, kind, lut, i, w, acc):
    """`acc += sum_q w[q] row_{i+q}` over eight rows of `m` in one sweep (converted as read: they are still in
    cache from their load), so `acc` is loaded and stored once per eight rows."""
    w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
    for j in range(acc.shape[0]):
        acc[j] += (w0 * _at(m, kind, lut, i, j) + w1 * _at(m, kind, lut, i + 1, j)
                   + w2 * _at(m, kind, lut, i + 2, j) + w3 * _at(m, kind, lut, i + 3, j)
                   + w4 * _at(m, kind, lut, i + 4, j) + w5 * _at(m, kind, lut, i + 5, j)
                   + w6 * _at(m, kind, lut, i + 6, j) + w7 * _at(m, kind, lut, i + 7, j))


@_compiled(_FM)
def _axpy1(f, w, acc):
    """`acc += w f` for one loaded row (the last rows of a group, or a row scaled before its dot product)."""
    for j in range(acc.shape[0]):
        acc[j] += w * f[j]


@_compiled(_FM)
def _block(src, sk, lut, base, rows, x, xoff, inv_scale, sz, given, moments, want_acc, f, w, row, tot, acc):
    """Rows `base..base+rows` of `src` (at most eight, read as dtype `sk`): each row's dot product `s` (or
    `x[xoff + q]` when `given`) and, with `moments`, its moments, added into `tot` (sums of z, z^2, z^3, z^4,
    |y|, s^2; min z; max z); then, with `want_acc`, the rows' share of `acc` in one sweep when they are eight.
    A row is read unscaled and the scale folded into `s`, `acc` and the moments' values (no sweep to scale
    it), unless its dot product overflows unscaled: then that row is scaled first and added to `acc` alone."""
    c = src.shape[1]
    block = rows == 8
    for q in range(rows):
        i = base + q
        loaded = moments or given or not block
        rlo = rhi = np.float32(0.0)
        if loaded:
            rlo, rhi = _load(src, sk, lut, i, f, moments)  # of the raw row
        unit = np.float32(1.0)
        if given:
            s = np.float32(x[xoff + q])
        else:
            s = _dot(f, x) if loaded else _dot_raw(src, sk, lut, i, x)
            if math.isfinite(s):
                s *= inv_scale
            else:
                if not loaded:
                    _load(src, sk, lut, i, f, False)
                unit = inv_scale
                for j in range(c):
                    f[j] *= inv_scale
                s = _dot(f, x)
        k = inv_scale / unit  # f times k is the scaled value y (its multiply may fuse with the shift)
        w[q] = s * k
        tot[5] += np.float64(s) * np.float64(s)
        if moments:
            _moments(f, k, sz, row)
            for r in range(5):
                tot[r] += row[r]
            rlo, rhi = rlo * inv_scale - sz, rhi * inv_scale - sz  # scaling keeps the order (to one rounding)
            if not (rlo >= tot[6]):  # NaN-safe: a NaN bound stays NaN
                tot[6] = rlo
            if not (rhi <= tot[7]):
                tot[7] = rhi
        if want_acc and (not block or unit != 1):  # alone, while it is loaded (and scaled)
            _axpy1(f, w[q], acc)
            w[q] = 0.0
    if want_acc and block:
        _axpy8(src, sk, lut, base, w, acc)


@_compiled(_FM)
def _groups(m, kind, lut, bounds, g0, g1, x, inv_scale, shift_z, given, moments, want_acc, sums, acc):
    """Rows of groups `g0..g1` (row bounds in `bounds`): per group its sums (`sums[g]`) and `acc[g]`.

    Row scalar `s_i` is `x[i]` when `given`, else the row's dot product with `x`; `acc[g] = sum_i s_i row_i`.
    With `moments`, also the shifted moments of z = y - shift_z (y the scaled value). Rows go eight at a
    time (`_block`). fp16 blocks go through the table once into float32 rows, read by the float32 code (a
    second table lookup a value in the eight-row sweep made fp16 passes 1.4x slower)."""
    c = m.shape[1]
    f = np.empty(c, dtype=np.float32)
    half = np.empty((8 if kind == 2 else 0, c), dtype=np.float32)
    w = np.empty(8, dtype=np.float32)
    row = np.empty(5, dtype=np.float64)
    tot = np.empty(8, dtype=np.float64)
    sz = np.float32(shift_z)
    for g in range(g0, g1):
        tot[:6] = 0.0
        tot[6], tot[7] = np.inf, -np.inf
        ag = acc[g]
        for i0 in range(bounds[g], bounds[g + 1], 8):
            rows = min(8, bounds[g + 1] - i0)
            if kind == 2:
                for q in range(rows):
                    for j in range(c):
                        half[q, j] = lut[np.intp(m[i0 + q, j])]
                _block(half, 0, lut, 0, rows, x, i0, inv_scale, sz, given, moments, want_acc, f, w, row, tot, ag)
            else:
                _block(m, kind, lut, i0, rows, x, i0, inv_scale, sz, given, moments, want_acc, f, w, row, tot, ag)
        for r in range(5):
            sums[g, r] = tot[r]
        sums[g, 5], sums[g, 6], sums[g, 7] = tot[6], tot[7], tot[5]


class Summary(NamedTuple):
    sums: list[float]  # of z, z^2, z^3, z^4 and |x / scale|, with z = (x - shift) / scale
    lo: float  # min z
    hi: float  # max z
    finite: bool  # every z was finite
    rayleigh: float  # ||A v||^2 after the power iteration, in units of scale^2 (0 for vectors)


class Pass(NamedTuple):
    sums: np.ndarray  # [8] float64, the groups' sums added in order (min and max taken)
    acc: np.ndarray  # [c] float64, sum over rows of s_i * row_i (zeros without want_acc)


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(n: int) -> ThreadPoolExecutor:
    """The `n`-worker pool of this process (a forked child makes its own: threads do not survive a fork)."""
    key = (os.getpid(), n)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(n, thread_name_prefix="sne-stats")
    return _POOLS[key]


def warm_up() -> float:
    """Load (or, the first time on a machine, compile) the loops for every dtype; returns the seconds taken.

    The first call in a process costs 0.3-0.4 s (numba loads its cache; compiling anew, ~3 s), so the service
    calls this at startup rather than in its first request."""
    t0 = time.perf_counter()
    for dtype in KINDS:
        rows = as_rows(torch.zeros(2, 2, dtype=dtype))
        row_pass(rows, dtype, np.ones(2), 1.0, 0.0, given=False, moments=True, want_acc=True)
    return time.perf_counter() - t0


def readable(t: torch.Tensor) -> bool:
    """Whether `row_pass` reads `t` directly (float32, bfloat16, float16; any contiguous layout)."""
    return t.dtype in KINDS and t.is_contiguous() and t.device.type == "cpu"


def as_rows(m: torch.Tensor) -> np.ndarray:
    """A contiguous 2-D tensor as the numpy array the loops read (16-bit floats as their raw bits)."""
    m = m.detach()
    if m.dtype in (torch.bfloat16, torch.float16):
        return m.view(torch.int16).numpy().view(np.uint16)
    return m.numpy()


def row_pass(
    rows: np.ndarray, dtype: torch.dtype, x: np.ndarray, inv_scale: float, shift_z: float, *, given: bool,
    moments: bool, want_acc: bool,
) -> Pass:
    """One read of `rows` (`[r, c]`, from `as_rows`): see `_groups`. Deterministic for any thread count."""
    r, c = rows.shape
    n_groups = max(1, min(GROUPS, r))
    bounds = (np.arange(n_groups + 1, dtype=np.int64) * r) // n_groups
    sums = np.zeros((n_groups, _NSUMS), dtype=np.float64)
    acc = np.zeros((n_groups, c if want_acc else 1), dtype=np.float32)
    xs = np.ascontiguousarray(x, dtype=np.float32)

    def run(g0: int, g1: int) -> None:
        _groups(rows, KINDS[dtype], _F16, bounds, g0, g1, xs, np.float32(inv_scale), shift_z, given, moments,
                want_acc, sums, acc)

    workers = max(1, min(torch.get_num_threads(), n_groups, r * c // (1 << 16) or 1))
    if workers == 1:
        run(0, n_groups)
    else:
        cuts = [n_groups * k // workers for k in range(workers + 1)]
        for fut in [_pool(workers).submit(run, a, b) for a, b in zip(cuts, cuts[1:])]:
            fut.result()
    return Pass(_reduce(sums), acc.astype(np.float64).sum(0) if want_acc else np.zeros(c))


def _reduce(sums: np.ndarray) -> np.ndarray:
    """`[k, 8]` partial sums (groups, or the pieces of a vector) -> `[8]`: added in order, min and max taken
    (a NaN bound stays NaN)."""
    total = sums.sum(0)
    total[5], total[6] = sums[:, 5].min(), sums[:, 6].max()
    return total


def _summary(s: np.ndarray, rayleigh: float) -> Summary:
    """A reduced first pass as the `Summary`; finite when every sum and both bounds are."""
    return Summary([float(v) for v in s[:5]], float(s[5]), float(s[6]), bool(np.isfinite(s[:7]).all()), rayleigh)


def moments_and_rayleigh(t: torch.Tensor, shift: float, scale: float, power_iters: int) -> Summary:
    """The shifted moments, extremes and Rayleigh quotient `model.stats.stats_and_scale` needs, from `readable(t)`.

    The same power iteration as the torch path, `v <- A^T A v` from the all-ones vector on `_as_matrix(t)`,
    run on the part's own rows `m`: when `A = m` (rows the long side) a pass gives `||m x||^2` and `m^T m x`;
    when `A = m^T` the first pass gives `y = m^T v` and each further one `m^T m y`, whose norms give the
    same quotients. Either way one pass per iteration, the first one with the moments."""
    m = t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(-1, 1)
    r, c = m.shape
    matrix = t.ndim >= 2 and min(r, c) > 1
    if not matrix:
        return _vector_moments(t, shift, scale)
    rows = as_rows(m)
    iters = max(1, power_iters)
    tall = c <= r  # `_as_matrix` keeps m: v has m's row length
    inv, shift_z = 1.0 / scale, shift / scale
    if tall:
        x = np.full(c, 1.0 / math.sqrt(c))
        first = row_pass(rows, t.dtype, x, inv, shift_z, given=False, moments=True, want_acc=iters > 1)
        wv2 = float(first.sums[7])
    else:
        x = np.full(r, 1.0 / math.sqrt(r))
        first = row_pass(rows, t.dtype, x, inv, shift_z, given=True, moments=True, want_acc=True)
        wv2 = float(first.acc @ first.acc)
    acc = first.acc
    for k in range(1, iters):
        norm = float(np.linalg.norm(acc))
        x = acc / norm if norm > 0 and math.isfinite(norm) else np.zeros_like(acc)
        step = row_pass(rows, t.dtype, x, inv, 0.0, given=False, moments=False, want_acc=not tall or k < iters - 1)
        if tall:
            wv2 = float(step.sums[7])
        else:
            ss = float(step.sums[7])
            wv2 = float(step.acc @ step.acc) / ss if ss > 0 else 0.0
        acc = step.acc
    return _summary(first.sums, wv2)


def _vector_moments(t: torch.Tensor, shift: float, scale: float) -> Summary:
    """The moments of a part with no matrix statistics, read as rows of `VECTOR_ROW` values (and one shorter
    row for the rest), so each row's float32 sums stay short and the loops vectorise."""
    flat = t.reshape(-1)
    head = flat.numel() // VECTOR_ROW * VECTOR_ROW
    pieces = [p for p in (flat[:head].view(-1, VECTOR_ROW), flat[head:].view(1, -1)) if p.numel()]
    out = [row_pass(as_rows(p), t.dtype, np.zeros(p.shape[0]), 1.0 / scale, shift / scale,
                    given=True, moments=True, want_acc=False).sums for p in pieces]
    return _summary(_reduce(np.stack(out)), 0.0)
