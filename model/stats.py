"""Exact statistics of every value of one part (a layer's weight or bias), computed streaming.

Budget sampling means the encoder may see only some chunks of a large part; these statistics travel with the
part so that nothing is invisible. They are computed block by block from the native-dtype tensor (an mmap
view stays an mmap view): at most `BLOCK_ELEMS` values are converted to float32 at a time and moments are
accumulated in float64, so memory stays bounded whatever the part's size.

Exact over all values: moments (mean, std, mean|x|, RMS, kurtosis), min, max, Frobenius norm. Estimated:
quantiles come from a deterministic subsample of at most `SAMPLE` values (exact when the part is smaller);
the spectral norm is the Rayleigh quotient after `POWER_ITERS` power iterations from the all-ones vector on
the 2-D reshaped matrix (a lower bound, so the stable rank is an upper bound). For conv weights, the lag-1
autocorrelations inside the kernels. Every output is finite for any finite input.

Cost: float32, bf16 and fp16 parts (every checkpoint we have seen) go through `model.stats_pass`: compiled
loops read the stored dtype, one pass per power iteration, the first with the moments (0.2-0.6 ns a value a
pass here: `benchmarks/stats_pass.py`). The torch path below serves float64 and is the reference the compiled one is tested against: one read
of the source, a matrix part of at most `HELD_ELEMS` values converted into a `Scratch` buffer during that read
and the power iteration run on the held copy; a larger part read again, block by block, for each iteration.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from model import stats_pass

# Values converted to float32 at a time: ATen's grain size, so elementwise ops and reductions run on the
# calling thread (no OpenMP fork/join per op; with 2 intra-op threads on a loaded 2-core machine 1 M blocks
# made a 200 MB file take 18 s instead of 2) and the block stays in cache. Dot products are sums of products,
# not BLAS `dot`, which threads (and stalls) at any size.
BLOCK_ELEMS = 1 << 15
SAMPLE = 1 << 15  # values the quantiles are taken from (sorting 1M would cost 0.2 s per part; 32 K
# is the grain size too: q01 within ~0.02 std)
POWER_ITERS = 4
COMPILED = True  # float32/bf16/fp16 parts go through model.stats_pass; the torch path below stays for float64
# and as the reference the compiled one is tested against
HELD_ELEMS = 1 << 24  # parts up to 16 M values (64 MB as float32) are held for the power iteration
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_TINY = 1e-12
_CLAMP = 1e6

STAT_NAMES: tuple[str, ...] = (
    "log_std",
    "mean_over_std",
    "abs_mean_over_rms",
    "log_rms",
    "log_kurtosis",
    "min_z",
    "max_z",
    *(f"q{round(q * 100):02d}_z" for q in QUANTILES),
    "log_frobenius",
    "log_spectral",
    "log_stable_rank",
    "log_fan_in",
    "log_fan_out",
    "log_numel",
    "kernel_corr_w",
    "kernel_corr_h",
)
N_STATS = len(STAT_NAMES)
_I = {name: i for i, name in enumerate(STAT_NAMES)}
SHAPE_STATS = ("log_fan_in", "log_fan_out", "log_numel")  # the part's size itself, 0 in the relative view


def relative_view(stats: torch.Tensor) -> torch.Tensor:
    """`[..., N_STATS]` statistics with the part's shape divided out (`SNEConfig.stats_view="relative"`).

    A model trained on one family sees few layer shapes, so size-dependent statistics of another family fall
    outside its training range: a weight's std grows as 1/sqrt(fan_in) shrinks, a random matrix's spectral norm
    as sqrt(fan_in) + sqrt(fan_out). Here the scales are in units of the 1/sqrt(fan_in) initialisation scale,
    the spectral norm in units of a random matrix's with the part's std and shape, the stable rank as a share
    of full rank, the Frobenius norm per output unit, and the sizes themselves are left out. A vector (fan-in 1)
    keeps its std and RMS.
    """
    out = stats.clone()
    fan_in, fan_out = stats[..., _I["log_fan_in"]], stats[..., _I["log_fan_out"]]
    half_in = 0.5 * fan_in
    for name in ("log_std", "log_rms"):
        out[..., _I[name]] = stats[..., _I[name]] + half_in
    out[..., _I["log_frobenius"]] = stats[..., _I["log_frobenius"]] - 0.5 * fan_out  # per output unit
    matrix = stats[..., _I["log_spectral"]] != 0  # 0 for vectors (no spectral norm)
    random_spec = stats[..., _I["log_std"]] + torch.logaddexp(half_in, 0.5 * fan_out)  # std (sqrt(m) + sqrt(n))
    out[..., _I["log_spectral"]] = torch.where(matrix, stats[..., _I["log_spectral"]] - random_spec, 0.0)
    full_rank = torch.minimum(fan_in, fan_out)
    out[..., _I["log_stable_rank"]] = torch.where(matrix, stats[..., _I["log_stable_rank"]] - full_rank, 0.0)
    for name in SHAPE_STATS:
        out[..., _I[name]] = 0.0
    return out


@dataclass
class Scratch:
    """A growable buffer that holds one part at a time in its work dtype; one per checkpoint being read."""

    buf: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def take(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        if self.buf.dtype != dtype or self.buf.numel() < n:
            self.buf = torch.empty(0)  # release the old one before allocating
            self.buf = torch.empty(n, dtype=dtype)
        return self.buf[:n].view(shape)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _blocks(m: torch.Tensor, block: int) -> Iterator[torch.Tensor]:
    """Row blocks of a 2-D view `[r, n]` holding about `block` values each (views, no copies)."""
    rows = max(1, block // max(1, m.shape[1]))
    for r0 in range(0, m.shape[0], rows):
        yield m[r0 : r0 + rows]


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    """`[out, fan_in]` for weights, `[n, 1]` for vectors; transposed so rows are the short side.

    Short rows keep row blocks small and let one pass do `v <- A^T A v` block by block.
    """
    m = t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(-1, 1)
    return m.T if m.shape[1] > m.shape[0] else m


def subsample(t: torch.Tensor, n: int = SAMPLE) -> torch.Tensor:
    """Up to `n` values of `t` as float64: all of them when `t` is small, else a fixed evenly spaced subset.

    Indices are `floor(i * numel / n)`: spread over the whole part, the same for the same shape, and not
    aligned with any row length (the step is not an integer in general).
    """
    flat = t.reshape(-1)
    if flat.numel() <= n:
        return flat.to(torch.float64)
    idx = (torch.arange(n, dtype=torch.float64) * (flat.numel() / n)).long()  # [n] sorted
    return flat[idx].to(torch.float64)


def quantiles(sample: np.ndarray, float32_exact: bool) -> list[float]:
    """`np.quantile(sample, QUANTILES)` (its default linear method, in the same float64 arithmetic), from one
    sort: of the sample as float32 when that holds its values exactly (numpy's SIMD sort of 32 K float32
    values takes 0.09 ms, where np.quantile's float64 selection took 1 ms a part)."""
    srt = np.sort(sample.astype(np.float32) if float32_exact else sample).astype(np.float64)
    v = (srt.size - 1) * np.asarray(QUANTILES, dtype=np.float64)
    below = np.floor(v)
    gamma = v - below
    i = below.astype(np.intp)
    a, b = srt[i], srt[np.minimum(i + 1, srt.size - 1)]
    d = b - a
    return np.where(gamma >= 0.5, b - d * (1 - gamma), a + d * gamma).tolist()  # numpy's _lerp


def _log(x: float) -> float:
    return math.log(max(x, _TINY))


def _div(a: float, b: float) -> float:
    """`a / b`, 0 where `b` is 0 (underflow of a product) or not a number."""
    return a / b if b and math.isfinite(b) else 0.0


def _finite(x: float) -> float:
    return float(min(max(x, -_CLAMP), _CLAMP)) if math.isfinite(x) else 0.0


class PartStats(NamedTuple):
    stats: torch.Tensor  # [N_STATS] float32
    divisor: float  # standardises the part's values: its std (its RMS when constant, 1 when all zero)
    finite: bool  # every standardised value was finite. False: NaN/Inf in the part or, rarely, a finite outlier
    # whose z overflowed float32; the caller decides with the exact check (model.checkpoint.all_finite)


def part_stats(t: torch.Tensor, block: int = BLOCK_ELEMS, power_iters: int = POWER_ITERS) -> torch.Tensor:
    """`[N_STATS]` float32 statistics of all values of `t` (any float dtype, any shape, read block-wise).

    Matrix statistics (spectral norm, stable rank) need `t.ndim >= 2`; for vectors (biases, norms) they are 0.
    """
    return stats_and_scale(t, block, power_iters).stats


def stats_and_scale(
    t: torch.Tensor, block: int = BLOCK_ELEMS, power_iters: int = POWER_ITERS, scratch: Scratch | None = None
) -> PartStats:
    """`part_stats`, the divisor that standardises the part's values (in float64 precision: the log in the
    vector would round it) and whether every value was finite, all from one read of the part."""
    t = t.detach()  # statistics of the values, never of a graph
    n = t.numel()
    if n == 0:
        return PartStats(torch.zeros(N_STATS, dtype=torch.float32), 1.0, True)
    wd = _work_dtype(t)
    sample = subsample(t)
    shift = float(sample.mean())
    scale = float(sample.std(correction=0)) if sample.numel() > 1 else 0.0
    if not (math.isfinite(scale) and scale > 0):
        scale = float(sample.abs().max()) or 1.0
    if not math.isfinite(scale) or not math.isfinite(shift):
        shift, scale = 0.0, 1.0
    if COMPILED and stats_pass.readable(t):
        c = stats_pass.moments_and_rayleigh(t, shift, scale, power_iters)
        stats, divisor = _assemble(t, n, shift, scale, (*c.sums, c.lo, c.hi), sample, c.rayleigh)
        return PartStats(torch.cat([stats, kernel_correlations(t, block)]), divisor, c.finite)
    a = _as_matrix(t)
    matrix = t.ndim >= 2 and min(a.shape) > 1
    iters = max(1, power_iters) if matrix else 1
    # power iteration from the all-ones vector: the same start for any order of the units, so every statistic is
    # invariant to permuting hidden units (what LIR trains for)
    v = torch.ones(a.shape[1], dtype=wd)  # [k]
    if matrix and n <= HELD_ELEMS:
        m = t.reshape(t.shape[0], -1)  # the source's own row order: its blocks are contiguous
        held = (scratch or Scratch()).take(m.shape, wd)  # [out, fan_in] filled by the moments pass
        mo = _moments_pass(m, None, shift, scale, block, held)
        ha = held.T if a.shape != m.shape else held  # `a`'s orientation: rows the long side
        for _ in range(iters):
            v = v / v.norm().clamp_min(_TINY)
            step = _matvec_whole(ha, v, scale)
            wv2, v = step if step is not None else _matvec_blocks(ha, v, scale, block)
    else:
        mo = _moments_pass(a, v / v.norm() if matrix else None, shift, scale, block)
        wv2, v = mo.wv2, mo.acc
        for _ in range(iters - 1):
            v = v / v.norm().clamp_min(_TINY)
            wv2, v = _matvec_blocks(a, v, scale, block)
    rayleigh = wv2 if matrix else 0.0  # ||A v||^2 with ||v|| = 1 (the last v), in units of scale^2
    stats, divisor = _assemble(t, n, shift, scale, (*mo.sums, mo.lo, mo.hi), sample, rayleigh)
    return PartStats(torch.cat([stats, kernel_correlations(t, block)]), divisor, mo.finite)


class _Moments(NamedTuple):
    sums: list[float]  # of z, z^2, z^3, z^4 and |x / scale|, with z = (x - shift) / scale
    lo: float  # min z
    hi: float  # max z
    finite: bool  # every z was finite
    wv2: float  # ||A v||^2 (0 without v)
    acc: torch.Tensor  # [k] A^T A v (empty without v)


def _moments_pass(
    a: torch.Tensor, v: torch.Tensor | None, shift: float, scale: float, block: int, hold: torch.Tensor | None = None
) -> _Moments:
    """One read of every value: the shifted moments, min and max, and with `v` the first `A^T A v` step.

    With `hold` (shaped like `a`) the values are also kept there, converted to the work dtype.
    """
    wd = hold.dtype if hold is not None else _work_dtype(a)
    sums = [0.0] * 5
    lo, hi, wv2, finite = math.inf, -math.inf, 0.0, True
    acc = torch.zeros(a.shape[1] if v is not None else 0, dtype=wd)
    dests = _blocks(hold, block) if hold is not None else None  # the same row blocks as `a`'s (same shape)
    for blk in _blocks(a, block):
        if dests is not None:
            blk = next(dests).copy_(blk)  # converted once, into the held copy
        y = blk.to(wd, copy=True).mul_(1.0 / scale)  # [r, k] a private copy: the source may be a read-only mmap
        if v is not None:
            u = y @ v  # [r]
            wv2 += float((u * u).sum())
            acc += y.T @ u  # [k]
        sums[4] += float(y.abs().sum())
        z = y.sub_(shift / scale).reshape(-1)  # [r*k] shifted so the moments do not cancel
        zlo, zhi = float(z.amin()), float(z.amax())  # NaN propagates through both
        finite = finite and math.isfinite(zlo) and math.isfinite(zhi)
        lo, hi = min(lo, zlo), max(hi, zhi)
        z2 = z * z
        p = (float(z.sum()), float(z2.sum()), float((z2 * z).sum()), float((z2 * z2).sum()))
        if not all(math.isfinite(x) for x in p):  # float32 overflow of z^4: redo this block in float64
            zd = z.double()
            p = (float(zd.sum()), float(zd.square().sum()), float(zd.pow(3).sum()), float(zd.pow(4).sum()))
        for i in range(4):
            sums[i] += p[i]
    return _Moments(sums, lo, hi, finite, wv2, acc)


def _matvec_blocks(a: torch.Tensor, v: torch.Tensor, scale: float, block: int) -> tuple[float, torch.Tensor]:
    """`||A v||^2` and `A^T A v` for `A = a / scale`, reading `a` block by block (scaled first: no overflow)."""
    acc, wv2 = torch.zeros_like(v), 0.0
    for blk in _blocks(a, block):
        y = blk.to(v.dtype, copy=True).mul_(1.0 / scale)  # [r, k]
        u = y @ v  # [r]
        wv2 += float((u * u).sum())
        acc += y.T @ u  # [k]
    return wv2, acc


def _matvec_whole(a: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[float, torch.Tensor] | None:
    """`_matvec_blocks` on a held part in two matrix-vector products; None where a product overflows unscaled
    (values near the dtype's range) or is 0, so the caller takes the scaled block path."""
    u = torch.mv(a, v).mul_(1.0 / scale)  # [r]
    acc = torch.mv(a.T, u).mul_(1.0 / scale)  # [k]
    wv2 = float((u * u).sum())
    if not (math.isfinite(wv2) and bool(torch.isfinite(acc).all())) or wv2 == 0.0:
        return None
    return wv2, acc


def kernel_correlations(t: torch.Tensor, block: int = BLOCK_ELEMS) -> torch.Tensor:
    """`[2]` lag-1 autocorrelation of a conv weight inside its kernels, along the last (w) and second-to-last
    (h) spatial axis, each kernel's mean removed; 0 where the axis does not exist (linear weights, vectors).

    Trained filters are smooth and initial ones are not, so this tracks training beyond any moment of the
    values (on arch1-digits a GBM over SNE's statistics ranks 0.781 with these, 0.767 without:
    `scripts/issue9_checks.py`)."""
    if t.ndim < 3 or t[0, 0].numel() < 2:
        return torch.zeros(2)
    wd = _work_dtype(t)
    acc = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # per axis: sum x_i x_{i+1}, sum x_i^2, sum x_{i+1}^2
    rows = max(1, block // max(1, t[0].numel()))
    for r0 in range(0, t.shape[0], rows):
        k = t[r0 : r0 + rows].reshape(-1, *t.shape[2:]).to(wd, copy=True)  # [r * in, *kernel]
        k -= k.reshape(k.shape[0], -1).mean(1).reshape(-1, *([1] * (k.ndim - 1)))
        for i, axis in enumerate((-1, -2)):
            if k.ndim + axis < 1 or k.shape[axis] < 2:
                continue
            a, b = k.narrow(axis, 0, k.shape[axis] - 1), k.narrow(axis, 1, k.shape[axis] - 1)
            acc[i][0] += float((a * b).sum())
            acc[i][1] += float((a * a).sum())
            acc[i][2] += float((b * b).sum())
    return torch.tensor([_finite(_div(ab, math.sqrt(aa * bb))) for ab, aa, bb in acc], dtype=torch.float32)


def _assemble(
    t: torch.Tensor, n: int, shift: float, scale: float, acc: tuple[float, ...], sample: torch.Tensor,
    rayleigh: float,
) -> tuple[torch.Tensor, float]:
    """Turn the accumulated sums (in units of `scale`, shifted by `shift`) into the statistics vector."""
    s1, s2, s3, s4, sabs, lo, hi = acc
    m1 = s1 / n  # mean of z = (x - shift) / scale
    var = max(s2 / n - m1 * m1, 0.0)
    mu4 = s4 / n - 4 * m1 * s3 / n + 6 * m1 * m1 * s2 / n - 3 * (m1 * m1) * (m1 * m1)  # products: inf, never OverflowError
    std_z = math.sqrt(var)
    flat = std_z <= 1e-6 * max(abs(m1), abs(shift / scale), _TINY)  # constant up to rounding
    mean = shift + scale * m1
    std = scale * std_z if not flat else 0.0
    flat = flat or not 0 < std < math.inf  # under- or overflowed (extreme F64 parts): no standardised stats
    ms_z = s2 / n + 2 * (shift / scale) * m1 + (shift / scale) * (shift / scale)  # mean of (x / scale)^2
    rms = scale * math.sqrt(max(ms_z, 0.0))
    fro = rms * math.sqrt(n)
    if flat:
        z_stats = [0.0] * (3 + len(QUANTILES))
        kurt = 1.0
    else:
        qs = quantiles(sample.numpy(), t.dtype != torch.float64) if sample.numel() > 1 else [mean] * len(QUANTILES)
        z_stats = [_div(mean, std), _div(lo - m1, std_z), _div(hi - m1, std_z)] + [_div(q - mean, std) for q in qs]
        kurt = _div(mu4, var * var)
    spec = scale * math.sqrt(max(rayleigh, 0.0))
    fan_out = t.shape[0] if t.ndim >= 1 else 1
    fan_in = n // max(fan_out, 1) if t.ndim >= 2 else 1
    out = [
        _log(std), z_stats[0], _div(scale * sabs / n, rms), _log(rms), _log(kurt),
        z_stats[1], z_stats[2], *z_stats[3:],
        _log(fro), _log(spec) if rayleigh > 0 else 0.0, _log(_div(fro * fro, spec * spec)) if rayleigh > 0 else 0.0,
        math.log(max(fan_in, 1)), math.log(max(fan_out, 1)), math.log(n),
    ]
    absmax = scale * max(abs(lo + shift / scale), abs(hi + shift / scale))  # finite for finite input
    divisor = next((d for d in (std, rms, absmax) if 0 < d < math.inf), 1.0)  # std overflows for F64 ~1e200
    return torch.tensor([_finite(x) for x in out], dtype=torch.float32), divisor  # [N_STATS], scalar
