"""Kendall tau and split-conformal intervals (model/evaluation/metrics.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from model.evaluation.metrics import (
    conformal_quantile,
    conformal_quantiles,
    coverage,
    grouped_kendall_tau,
    interval,
    kendall_tau,
)

# ------------------------------------------------------------------------------------------- kendall tau


def test_kendall_tau_hand_example() -> None:
    # 5 concordant pairs, 1 discordant (2,3 swapped): (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_grouped_kendall_tau_is_the_mean_of_each_groups_tau() -> None:
    # group a ranks right, group b backwards; pooled, the levels (a above b) dominate
    pred = [10, 11, 12, 13, 14, 4, 3, 2, 1, 0]
    true = [0.8, 0.81, 0.82, 0.83, 0.84, 0.1, 0.2, 0.3, 0.4, 0.5]
    groups = ["a"] * 5 + ["b"] * 5
    assert grouped_kendall_tau(pred, true, groups) == pytest.approx(0.0)  # (1 + -1) / 2
    assert kendall_tau(pred, true) > 0.5
    # a group below min_size is left out; none left: the pooled tau
    assert grouped_kendall_tau(pred[:6], true[:6], groups[:6]) == pytest.approx(1.0)
    assert grouped_kendall_tau(pred[:4], true[:4], ["x", "y", "x", "y"]) == pytest.approx(kendall_tau(pred[:4], true[:4]))
    with pytest.raises(ValueError, match="differ in length"):
        grouped_kendall_tau(pred, true, groups[:3])

def test_kendall_tau_ties_is_tau_b() -> None:
    # pred has one tied pair: n0 = 6, n1 = 1, n2 = 0; 5 concordant, 0 discordant -> 5 / sqrt(5 * 6)
    pred, true = [1, 1, 2, 3], [1, 2, 3, 4]
    assert kendall_tau(pred, true) == pytest.approx(5 / math.sqrt(30))
    assert kendall_tau(pred, true) == pytest.approx(kendalltau(pred, true).statistic)


def test_kendall_tau_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(size=300)
    pred = true + rng.normal(scale=0.2, size=300)
    pred_tied = np.round(pred, 1)  # many ties
    for p in (pred, pred_tied):
        assert kendall_tau(p, true) == pytest.approx(kendalltau(p, true, variant="b").statistic, abs=1e-12)


def test_kendall_tau_undefined_is_zero() -> None:
    assert kendall_tau([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) == 0.0  # constant prediction
    assert kendall_tau([0.1, 0.2, 0.3], [0.7, 0.7, 0.7]) == 0.0  # constant target
    assert kendall_tau([0.3], [0.4]) == 0.0
    assert kendall_tau([], []) == 0.0


def test_kendall_tau_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        kendall_tau([1, float("nan"), 3], [1, 2, 3])


# -------------------------------------------------------------------------------------------- conformal

RES = np.array([-0.5, 0.1, 0.2, -0.3, 0.4, 0.05, 0.6, -0.7, 0.8, 0.9])  # |r| sorted: .05 .1 .2 ... .9


def test_conformal_quantile_hand_computation() -> None:
    # n = 10. alpha = 0.1: k = ceil(11 * 0.9) = 10 -> level 1.0 -> max |r|
    assert conformal_quantile(RES, 0.1) == pytest.approx(0.9)
    # alpha = 0.5: k = ceil(5.5) = 6 -> level 0.6; "higher" -> index ceil(9 * 0.6) = 6 of sorted |r| -> 0.6
    assert conformal_quantile(RES, 0.5) == pytest.approx(0.6)
    # alpha = 0.2: k = ceil(8.8) = 9 -> level 0.9 -> index ceil(8.1) = 9 -> 0.9
    assert conformal_quantile(RES, 0.2) == pytest.approx(0.9)
    # alpha = 0.05: k = ceil(10.45) = 11 > n -> no finite guarantee
    assert conformal_quantile(RES, 0.05) == math.inf
    # equals numpy's quantile with the finite-sample level
    r = np.abs(np.random.default_rng(1).normal(size=101))
    assert conformal_quantile(r, 0.1) == np.quantile(r, math.ceil(102 * 0.9) / 101, method="higher")


def test_conformal_quantile_small_n_and_bad_alpha() -> None:
    assert conformal_quantile(np.array([]), 0.1) == math.inf
    assert conformal_quantile(np.array([0.1] * 8), 0.1) == math.inf  # ceil(9 * 0.9) = 9 > 8
    assert conformal_quantile(np.array([0.1] * 9), 0.1) == pytest.approx(0.1)  # ceil(10 * 0.9) = 9 <= 9
    for a in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            conformal_quantile(RES, a)


def test_conformal_quantiles_keys() -> None:
    qs = conformal_quantiles(np.linspace(-1, 1, 1001))
    assert list(qs) == ["0.90", "0.80", "0.95"]
    assert qs["0.80"] <= qs["0.90"] <= qs["0.95"]
    assert qs["0.90"] == conformal_quantile(np.linspace(-1, 1, 1001), 0.1)


def test_interval_clipped() -> None:
    low, high = interval([0.02, 0.5, 0.99], 0.05)
    np.testing.assert_allclose(low, [0.0, 0.45, 0.94])
    np.testing.assert_allclose(high, [0.07, 0.55, 1.0])
    low, high = interval(np.array([0.3, 0.7]), math.inf)
    np.testing.assert_array_equal(low, [0.0, 0.0])
    np.testing.assert_array_equal(high, [1.0, 1.0])
    with pytest.raises(ValueError):
        interval([0.5], -0.1)


def test_coverage_simple() -> None:
    assert coverage([0.1, 0.5, 0.9], [0.0, 0.6, 0.9], [0.2, 0.7, 0.95]) == pytest.approx(2 / 3)  # ends inclusive
    with pytest.raises(ValueError):
        coverage([], [], [])
    with pytest.raises(ValueError, match="length"):
        coverage([0.1, 0.2], [0.0], [1.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_conformal_coverage_gaussian(seed: int) -> None:
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        true = rng.uniform(0.3, 0.7, size=n)
        return true, true + rng.normal(scale=0.03, size=n)  # (true, pred)

    cal_true, cal_pred = draw(2000)
    test_true, test_pred = draw(5000)
    qs = conformal_quantiles(cal_pred - cal_true)
    for key, alpha in (("0.90", 0.1), ("0.80", 0.2), ("0.95", 0.05)):
        low, high = interval(test_pred, qs[key])
        assert abs(coverage(test_true, low, high) - (1 - alpha)) < 0.02, key
