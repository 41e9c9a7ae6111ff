"""Evaluation metrics: Kendall's tau for ranking quality, split-conformal intervals for accuracy predictions.

Conventions:
- ``kendall_tau`` is scipy's tau-b. When it is undefined (fewer than two items, or either input constant, so
  no pair is ordered) it returns 0.0 — "no rank information" — instead of scipy's NaN, so that averages over
  splits stay finite. NaN/inf *inputs* are a caller bug and raise ``ValueError``.
- Conformal quantiles use absolute residuals ``|true - pred|`` from a held-out calibration set; the normalised
  variant divides them by a difficulty estimate ``sigma(x)`` (:class:`Difficulty`) so intervals are narrow where
  the predictor is usually right and wide where it is not, at the same coverage guarantee.
- ``bootstrap_tau`` resamples *runs* (all checkpoints of a training run together), the unit of the split.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import kendalltau as _scipy_kendalltau

__all__ = [
    "Difficulty", "bootstrap_means", "bootstrap_tau", "bootstrap_taus", "conformal_quantile", "conformal_quantiles",
    "coverage", "group_resamples", "interval", "kendall_tau", "mean_width", "normalized_conformal", "normalized_interval",
]

DEFAULT_ALPHAS: tuple[float, ...] = (0.1, 0.2, 0.05)


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(a)).sum())} of {a.size} values)")
    return a


def kendall_tau(pred: ArrayLike, true: ArrayLike) -> float:
    """Kendall's tau-b between predictions and targets (ties handled as in scipy).

    Returns 0.0 when tau is undefined (n < 2 or a constant input). Raises ``ValueError`` on a length mismatch
    or non-finite values.
    """
    p, t = _vector(pred, "pred"), _vector(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in length: {p.size} vs {t.size}")
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return 0.0
    tau = _scipy_kendalltau(p, t, variant="b").statistic
    return 0.0 if not np.isfinite(tau) else float(tau)


def grouped_kendall_tau(pred: ArrayLike, true: ArrayLike, groups: Sequence[object], min_size: int = 5) -> float:
    """The mean of each group's τ (groups of fewer than `min_size` left out; the pooled τ if none is left).

    What `sne eval` scores on a mixture is one τ per zoo; the pooled τ also rewards telling the zoos' accuracy
    levels apart, which is easy and says nothing about ranking within a family."""
    p, t = _vector(pred, "pred"), _vector(true, "true")
    if p.shape != t.shape or len(groups) != p.size:
        raise ValueError(f"pred, true and groups differ in length: {p.size}, {t.size}, {len(groups)}")
    members: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    taus = [kendall_tau(p[ix], t[ix]) for ix in members.values() if len(ix) >= min_size]
    return float(np.mean(taus)) if taus else kendall_tau(p, t)


def conformal_quantile(residuals: ArrayLike, alpha: float = 0.1) -> float:
    """Split-conformal half-width for miscoverage ``alpha`` from calibration residuals.

    The ``ceil((n+1)(1-alpha))/n`` empirical quantile of ``|residuals|`` with ``method="higher"`` (the
    finite-sample correction of split conformal prediction, as in Angelopoulos & Bates' reference code), so
    that a new exchangeable point lies in ``pred ± q`` with probability >= 1 - alpha. Note: for
    ``k = ceil((n+1)(1-alpha)) < n``, ``method="higher"`` picks the (k+1)-th smallest |residual|, one order
    statistic more conservative than the k-th (``method="inverted_cdf"``); both are valid, the gap is
    O(1/n). Returns ``+inf`` when n is too small for that level (k > n, including n = 0).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    r = np.abs(_vector(residuals, "residuals"))
    n = r.size
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)  # guard: (n+1)*(1-alpha) may land a hair above an integer
    if n == 0 or k > n:
        return math.inf
    return float(np.quantile(r, min(k / n, 1.0), method="higher"))


def conformal_quantiles(residuals: ArrayLike, alphas: Iterable[float] = DEFAULT_ALPHAS) -> dict[str, float]:
    """``conformal_quantile`` for several levels, keyed by nominal coverage: ``{"0.90": q, "0.80": q, ...}``."""
    return {f"{1.0 - a:.2f}": conformal_quantile(residuals, a) for a in alphas}


def interval(pred: ArrayLike, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Prediction interval ``pred ± q`` clipped to [0, 1] (accuracies); ``q = inf`` gives [0, 1]."""
    if math.isnan(q) or q < 0:
        raise ValueError(f"q must be a non-negative number, got {q}")
    p = np.asarray(pred, dtype=np.float64)
    return np.clip(p - q, 0.0, 1.0), np.clip(p + q, 0.0, 1.0)


def coverage(true: ArrayLike, low: ArrayLike, high: ArrayLike) -> float:
    """Fraction of targets with ``low <= true <= high``."""
    t, lo, hi = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (true, low, high))
    if not (t.shape == lo.shape == hi.shape):
        raise ValueError(f"true, low and high differ in length: {t.size}, {lo.size}, {hi.size}")
    if t.size == 0:
        raise ValueError("coverage of an empty set is undefined")
    return float(np.mean((lo <= t) & (t <= hi)))


def mean_width(low: ArrayLike, high: ArrayLike) -> float:
    """Mean width ``high - low`` of (clipped) intervals: what a user sees, next to coverage."""
    return float(np.mean(np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)))


def group_resamples(groups: Sequence[object], n_boot: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` index arrays, each drawing as many groups (training runs) as there are, with replacement, and
    keeping a drawn group's rows together. The same ``groups`` and ``seed`` give the same draws, so statistics
    of different methods over one test split are paired replicate by replicate."""
    if len(groups) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_boot)]
    _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))]) for _ in range(n_boot)]


def bootstrap_taus(
    pred: ArrayLike, true: ArrayLike, groups: Sequence[object], n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """``n_boot`` bootstrap replicates of Kendall tau, resampling groups (training runs) with replacement.

    Checkpoints of one run are not independent, so resampling them one by one would make intervals too
    narrow; each replicate draws as many runs as there are and keeps each drawn run's checkpoints together.
    """
    p, t = _vector(pred, "pred"), _vector(true, "true")
    if len(groups) != p.size or p.size != t.size:
        raise ValueError(f"pred, true and groups differ in length: {p.size}, {t.size}, {len(groups)}")
    if p.size == 0:
        return np.zeros(n_boot)
    return np.array([kendall_tau(p[idx], t[idx]) for idx in group_resamples(groups, n_boot, seed)])


def bootstrap_means(values: ArrayLike, groups: Sequence[object], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``n_boot`` run-resampled replicates of the mean of ``values`` (e.g. 0/1 "covered" marks: how far a
    coverage measured on a few dozen runs can move from one draw of runs to the next)."""
    v = _vector(values, "values")
    if len(groups) != v.size or v.size == 0:
        raise ValueError(f"values ({v.size}) and groups ({len(groups)}) must be non-empty and of one length")
    return np.array([float(v[idx].mean()) for idx in group_resamples(groups, n_boot, seed)])


def bootstrap_tau(
    pred: ArrayLike, true: ArrayLike, groups: Sequence[object], n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Kendall tau and its percentile bootstrap interval ``(tau, low, high)`` at ``level`` (runs resampled)."""
    stats = bootstrap_taus(pred, true, groups, n_boot, seed)
    tau, a = kendall_tau(pred, true), (1.0 - level) / 2
    return tau, float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))


@dataclass(frozen=True)
class Difficulty:
    """``sigma(x)``: how wrong the predictor usually is near ``x``, for normalised conformal scores.

    The mean absolute residual of the ``k`` nearest reference points (embeddings of the training split,
    standardised per dimension), floored at ``floor`` so that no interval collapses to a point. Train
    residuals are smaller than fresh ones (the model saw them); only their *relative* size matters, since the
    scale is calibrated on held-out data by ``conformal_quantile(|r| / sigma)``.
    """

    reference: np.ndarray  # [n, d] standardised reference embeddings
    residuals: np.ndarray  # [n] |true - pred| of the reference points
    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    k: int
    floor: float

    @classmethod
    def fit(cls, embeddings: ArrayLike, residuals: ArrayLike, k: int = 20, floor_quantile: float = 0.1) -> Difficulty:
        """From reference embeddings ``[n, d]`` and their residuals ``[n]``."""
        e = np.asarray(embeddings, dtype=np.float64)
        r = np.abs(_vector(residuals, "residuals"))
        if e.ndim != 2 or e.shape[0] != r.size or r.size == 0:
            raise ValueError(f"embeddings {e.shape} and residuals ({r.size}) do not match")
        mean, scale = e.mean(0), e.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        floor = max(float(np.quantile(r, floor_quantile)), 1e-3)
        return cls((e - mean) / scale, r, mean, scale, min(k, r.size), floor)

    def __call__(self, embeddings: ArrayLike) -> np.ndarray:
        """``sigma`` per row of ``embeddings [m, d]``: mean |residual| of the k nearest reference rows."""
        z = (np.asarray(embeddings, dtype=np.float64) - self.mean) / self.scale  # [m, d]
        d2 = (z * z).sum(1)[:, None] - 2 * z @ self.reference.T + (self.reference**2).sum(1)[None, :]  # [m, n]
        near = np.argpartition(d2, self.k - 1, axis=1)[:, : self.k]  # [m, k]
        return np.maximum(self.residuals[near].mean(1), self.floor)


def normalized_interval(pred: ArrayLike, sigma: ArrayLike, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised conformal interval ``pred ± q * sigma(x)`` clipped to [0, 1] (``q`` from
    ``conformal_quantile(|r| / sigma)`` on the calibration split)."""
    p, s = np.asarray(pred, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if math.isnan(q) or q < 0 or np.any(s <= 0):
        raise ValueError("q must be >= 0 and sigma > 0")
    half = q * s if math.isfinite(q) else np.full_like(p, math.inf)
    return np.clip(p - half, 0.0, 1.0), np.clip(p + half, 0.0, 1.0)


def normalized_conformal(
    ref_emb: ArrayLike, ref_residuals: ArrayLike, cal_emb: ArrayLike, cal_residuals: ArrayLike,
    alphas: Iterable[float] = DEFAULT_ALPHAS, k: int = 20,
) -> dict[str, object]:
    """The card's normalised-conformal section: ``sigma`` from the reference (training) embeddings and their
    residuals, quantiles of ``|r| / sigma`` on the calibration (val) split, per nominal level."""
    sigma = Difficulty.fit(ref_emb, ref_residuals, k=k)
    scores = np.abs(_vector(cal_residuals, "cal_residuals")) / sigma(cal_emb)
    return {
        "method": f"normalised split conformal: |r| / sigma(x), sigma = mean |train residual| of the {sigma.k} "
        "nearest training embeddings (standardised), floored; quantiles on the val split",
        "k": sigma.k, "floor": sigma.floor, "accuracy": conformal_quantiles(scores, alphas),
    }
