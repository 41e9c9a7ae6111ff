"""Bootstrap intervals on tau (by run) and normalised conformal intervals, on synthetic data with known truth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluation.metrics import (
    Difficulty,
    bootstrap_means,
    bootstrap_tau,
    bootstrap_taus,
    conformal_quantile,
    coverage,
    interval,
    mean_width,
    normalized_conformal,
    normalized_interval,
)


def _bivariate(n: int, rho: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=n)
    return x, rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n)


def test_bootstrap_tau_covers_population_tau() -> None:
    # bivariate normal: population tau = 2/pi * arcsin(rho); the 95 % interval must hold it ~95 % of the time
    rng, rho = np.random.default_rng(0), 0.6
    truth = 2 / math.pi * math.asin(rho)
    hits = []
    for i in range(80):
        p, t = _bivariate(60, rho, rng)
        tau, lo, hi = bootstrap_tau(p, t, list(range(60)), n_boot=300, seed=i)
        assert lo <= tau <= hi
        hits.append(lo <= truth <= hi)
    assert 0.85 <= np.mean(hits) <= 1.0  # nominal 0.95; binomial sd 0.024 over 80 datasets


def test_bootstrap_resamples_runs_not_checkpoints() -> None:
    # 40 runs with 5 identical checkpoints each carry the information of 40 points, not 200
    rng = np.random.default_rng(1)
    p, t = _bivariate(40, 0.5, rng)
    p5, t5 = np.repeat(p, 5), np.repeat(t, 5)
    _, lo_run, hi_run = bootstrap_tau(p5, t5, np.repeat(np.arange(40), 5).tolist(), n_boot=400)
    _, lo_ckpt, hi_ckpt = bootstrap_tau(p5, t5, list(range(200)), n_boot=400)
    assert hi_run - lo_run > 1.6 * (hi_ckpt - lo_ckpt)
    with pytest.raises(ValueError, match="length"):
        bootstrap_tau(p, t, [0, 1])


def test_paired_replicates_make_a_narrow_interval_for_a_lead() -> None:
    # two predictors that share most of their error: each tau is uncertain by run, their difference far less.
    # The replicates of both resample the same runs (one seed, one grouping), so the difference is paired.
    rng = np.random.default_rng(3)
    t = rng.normal(size=300)
    shared = t + rng.normal(size=300)
    a, b = shared + 0.05 * rng.normal(size=300), shared + 0.05 * rng.normal(size=300)
    groups = np.repeat(np.arange(60), 5).tolist()
    ra, rb = bootstrap_taus(a, t, groups, 400, seed=7), bootstrap_taus(b, t, groups, 400, seed=7)
    width = lambda r: float(np.quantile(r, 0.975) - np.quantile(r, 0.025))  # noqa: E731
    assert width(ra - rb) < 0.4 * width(ra)
    unpaired = ra - bootstrap_taus(b, t, groups, 400, seed=8)  # other draws of runs: the shared error stays in
    assert width(ra - rb) < 0.4 * width(unpaired)


def test_bootstrap_means_resample_runs() -> None:
    # coverage marks of 30 runs, 10 checkpoints each, all covered or all not within a run: the run-resampled
    # interval of the coverage is as wide as 30 points', much wider than 300 independent marks would give
    marks = np.repeat(np.arange(30) % 10 != 0, 10).astype(float)  # 27 of 30 runs covered: 0.9
    by_run = bootstrap_means(marks, np.repeat(np.arange(30), 10).tolist(), 1000, seed=0)
    by_ckpt = bootstrap_means(marks, list(range(300)), 1000, seed=0)
    lo, hi = np.quantile(by_run, [0.025, 0.975])
    assert lo < 0.8 and hi == 1.0 and lo <= marks.mean() <= hi
    assert hi - lo > 2.0 * float(np.quantile(by_ckpt, 0.975) - np.quantile(by_ckpt, 0.025))
    with pytest.raises(ValueError, match="one length"):
        bootstrap_means(marks, [0, 1])


def _heteroscedastic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings in [0,1]^3; residual scale grows 20x along the first axis; returns emb, pred, true, scale."""
    emb = rng.uniform(size=(n, 3))
    scale = 0.01 + 0.2 * emb[:, 0] ** 2
    pred = rng.uniform(0.2, 0.8, size=n)
    return emb, pred, pred + scale * rng.normal(size=n), scale


def test_normalized_conformal_coverage_and_width() -> None:
    rng = np.random.default_rng(2)
    ref_e, ref_p, ref_t, _ = _heteroscedastic(3000, rng)
    cal_e, cal_p, cal_t, _ = _heteroscedastic(3000, rng)
    te_e, te_p, te_t, te_scale = _heteroscedastic(20000, rng)
    sigma = Difficulty.fit(ref_e, ref_t - ref_p, k=30)
    q = conformal_quantile(np.abs(cal_t - cal_p) / sigma(cal_e), 0.1)
    lo, hi = normalized_interval(te_p, sigma(te_e), q)
    cov = coverage(te_t, lo, hi)
    assert abs(cov - 0.90) < 0.02  # calibration n = 3000: sd of the coverage ~0.006
    q_const = conformal_quantile(np.abs(cal_t - cal_p), 0.1)
    lo_c, hi_c = interval(te_p, q_const)
    assert abs(coverage(te_t, lo_c, hi_c) - 0.90) < 0.02
    assert mean_width(lo, hi) < 0.8 * mean_width(lo_c, hi_c)
    # and coverage holds where it is easy and where it is hard (constant intervals over-/under-cover there)
    easy, hard = te_scale < np.quantile(te_scale, 0.3), te_scale > np.quantile(te_scale, 0.7)
    for part in (easy, hard):
        assert abs(coverage(te_t[part], lo[part], hi[part]) - 0.90) < 0.05
    assert coverage(te_t[easy], lo_c[easy], hi_c[easy]) > 0.99
    assert coverage(te_t[hard], lo_c[hard], hi_c[hard]) < 0.80


def test_difficulty_floor_and_validation() -> None:
    sigma = Difficulty.fit(np.eye(4), np.zeros(4), k=2)
    assert np.all(sigma(np.eye(4)) >= 1e-3)
    with pytest.raises(ValueError, match="do not match"):
        Difficulty.fit(np.eye(4), np.zeros(3))
    with pytest.raises(ValueError, match="sigma"):
        normalized_interval([0.5], [0.0], 1.0)
    lo, hi = normalized_interval([0.5], [0.1], math.inf)
    assert (lo[0], hi[0]) == (0.0, 1.0)


def test_normalized_conformal_card_section() -> None:
    rng = np.random.default_rng(3)
    ref_e, ref_p, ref_t, _ = _heteroscedastic(500, rng)
    cal_e, cal_p, cal_t, _ = _heteroscedastic(300, rng)
    section = normalized_conformal(ref_e, ref_t - ref_p, cal_e, cal_t - cal_p, (0.1, 0.2), k=15)
    assert section["k"] == 15 and set(section["accuracy"]) == {"0.90", "0.80"}  # type: ignore[arg-type]
    q = section["accuracy"]  # type: ignore[index]
    assert 0 < q["0.80"] < q["0.90"] < math.inf


def test_predictor_serves_normalized_intervals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A predictor calibrated with normalised conformal answers q * sigma(x) per checkpoint, after a save/load."""
    import torch

    from model.checkpoint import load_checkpoint
    from model.predictor import DEFAULT_LEVEL, Predictor
    from tests.conftest import ckpt_bytes

    torch.set_num_threads(1)
    pred = Predictor.untrained()
    ref = [load_checkpoint(ckpt_bytes("cnn" if s % 2 else "mlp", s)) for s in range(40)]
    emb = np.stack([p.embedding for p in pred.predict(ref)])  # [40, E]
    residuals = np.where(np.arange(40) % 2 == 1, 0.02, 0.2)  # CNNs easy, MLPs hard
    pred.reference, pred.residuals = torch.from_numpy(emb), torch.from_numpy(residuals).float()
    q = 1.5
    pred.card = pred.card.updated(conformal={"accuracy": {DEFAULT_LEVEL: 0.4},
                                             "normalized": {"k": 5, "accuracy": {DEFAULT_LEVEL: q}}})
    pred.save(tmp_path)
    served = Predictor.load(tmp_path)
    new = [load_checkpoint(ckpt_bytes(kind, 1000 + i)) for i, kind in enumerate(("cnn", "mlp", "cnn", "mlp"))]
    out = served.predict(new)
    sigma = Difficulty.fit(served.reference.numpy(), residuals, k=5)(np.stack([p.embedding for p in out]))
    for p, s in zip(out, sigma):
        assert p.low == pytest.approx(max(0.0, p.accuracy - q * s), abs=1e-5)
        assert p.high == pytest.approx(min(1.0, p.accuracy + q * s), abs=1e-5)
    widths = [p.high - p.low for p in out]
    assert max(widths[1], widths[3]) > 3 * min(widths[0], widths[2])  # the hard family gets the wide interval
    plain = Predictor(served.model, served.card, served.reference)  # no residuals: the constant half-width
    assert all(p.high - p.low == pytest.approx(min(1.0, p.accuracy + 0.4) - max(0.0, p.accuracy - 0.4))
               for p in plain.predict(new))
