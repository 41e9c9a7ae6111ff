"""Evaluation metrics: Kendall's tau for ranking quality, split-conformal intervals for accuracy predictions.

Conventions:
- ``kendall_tau`` is scipy's tau-b. When it is undefined (fewer than two items, or either input constant, so
  no pair is ordered) it returns 0.0 — "no rank information" — instead of scipy's NaN, so that averages over
  splits stay finite. NaN/inf *inputs* are a caller bug and raise ``ValueError``.
- Conformal quantiles use absolute residuals ``|true - pred|`` from a held-out calibration set.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import kendalltau as _scipy_kendalltau

__all__ = ["conformal_quantile", "conformal_quantiles", "coverage", "interval", "kendall_tau"]

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
