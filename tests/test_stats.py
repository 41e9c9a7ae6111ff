import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.stats import N_STATS, QUANTILES, STAT_NAMES, part_stats, quantiles, relative_view, subsample


def _named(t: torch.Tensor, **kw) -> dict[str, float]:
    s = part_stats(t, **kw)
    assert s.shape == (N_STATS,) and s.dtype == torch.float32
    return dict(zip(STAT_NAMES, s.tolist()))


def _reference(t: torch.Tensor) -> dict[str, float]:
    x = t.double().reshape(-1)
    mean, std = x.mean(), x.std(correction=0)
    q = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64))
    m = t.double().reshape(t.shape[0], -1)
    return {
        "log_std": math.log(std),
        "mean_over_std": float(mean / std),
        "abs_mean_over_rms": float(x.abs().mean() / x.square().mean().sqrt()),
        "log_rms": math.log(x.square().mean().sqrt()),
        "log_kurtosis": math.log(((x - mean) ** 4).mean() / std**4),
        "min_z": float((x.min() - mean) / std),
        "max_z": float((x.max() - mean) / std),
        **{f"q{round(p * 100):02d}_z": float((v - mean) / std) for p, v in zip(QUANTILES, q)},
        "log_frobenius": math.log(x.norm()),
        "log_spectral": math.log(torch.linalg.matrix_norm(m, 2)),
        "log_fan_in": math.log(m.shape[1]),
        "log_fan_out": math.log(m.shape[0]),
        "log_numel": math.log(x.numel()),
    }


@pytest.mark.parametrize("shape", [(40, 700), (700, 40), (12, 6, 3, 3)])
def test_exact_over_all_values_block_by_block(shape):
    torch.manual_seed(0)
    # a dominant direction (as trained weights have) plus a heavy-tailed, shifted bulk
    t = torch.distributions.StudentT(5.0).sample(shape) * 0.03 + 0.01
    m = t.reshape(shape[0], -1)
    m += 5.0 * torch.outer(torch.randn(shape[0]), torch.randn(m.shape[1])) / math.sqrt(m.numel())
    got = _named(t, block=1000)  # many blocks, several per row for the wide shape
    ref = _reference(t)
    spectral = ref.pop("log_spectral")
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-4), k
    # the spectral norm is a power-iteration estimate: a lower bound, close when one direction dominates
    assert spectral - 0.02 < got["log_spectral"] <= spectral + 1e-5
    # stable rank consistent with the two norms it is made of
    assert got["log_stable_rank"] == pytest.approx(2 * got["log_frobenius"] - 2 * got["log_spectral"], abs=1e-4)


def test_block_size_does_not_change_the_result():
    t = torch.randn(64, 96).to(torch.bfloat16)
    a, b = part_stats(t, block=100), part_stats(t, block=1 << 20)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_native_bf16_matches_its_float_values():
    t = (torch.randn(50, 80) * 0.1).to(torch.bfloat16)
    assert torch.allclose(part_stats(t), part_stats(t.float()), rtol=1e-6, atol=1e-6)


def test_scale_and_shift_only_move_the_scale_features():
    t = torch.randn(30, 30)
    a, b = _named(t), _named(t * 1000.0)
    assert b["log_std"] - a["log_std"] == pytest.approx(math.log(1000.0), abs=1e-4)
    for k in ("log_kurtosis", "min_z", "max_z", "q05_z", "q95_z", "log_stable_rank"):
        assert a[k] == pytest.approx(b[k], abs=1e-4), k


def test_vectors_have_no_matrix_statistics():
    s = _named(torch.randn(100))
    assert s["log_spectral"] == 0.0 and s["log_stable_rank"] == 0.0
    assert s["log_fan_out"] == pytest.approx(math.log(100)) and s["log_fan_in"] == 0.0


def test_quantiles_from_a_spread_subsample_when_large():
    t = torch.arange(3_000_000, dtype=torch.float32)
    sub = subsample(t, 1000)
    assert sub.numel() == 1000 and sub[0] == 0 and sub[-1] > 2_990_000  # covers the whole part
    s = _named(t)
    assert s["q50_z"] == pytest.approx(0.0, abs=1e-3)
    assert s["q99_z"] == pytest.approx((0.99 - 0.5) * math.sqrt(12), abs=1e-2)  # uniform: exact at 1e-2


@pytest.mark.parametrize(
    "t",
    [
        torch.zeros(5), torch.ones(3, 3), torch.tensor(2.0), torch.tensor([1e30, 0.0, 0.0]),
        torch.full((4, 4), 3e38), torch.tensor([1e300, -1e300], dtype=torch.float64),
        torch.tensor([3e38, -3e38, 1.0]), torch.randn(*([1] * 7), 7), torch.tensor([5.0]).to(torch.float16),
    ],
    ids=lambda t: f"{t.dtype}-{tuple(t.shape)}",
)
def test_always_finite(t):
    s = part_stats(t)
    assert s.shape == (N_STATS,) and bool(torch.isfinite(s).all())


def test_constant_part_is_marked_constant():
    s = _named(torch.full((8, 8), 0.25))
    assert s["log_std"] < -20 and s["log_rms"] == pytest.approx(math.log(0.25), abs=1e-5)
    assert s["min_z"] == s["max_z"] == s["mean_over_std"] == 0.0


def test_kernel_correlations_tell_smooth_filters_from_noise():
    from model.stats import kernel_correlations

    torch.manual_seed(0)
    noise = torch.randn(32, 8, 5, 5)
    ramp = torch.linspace(-1, 1, 5)
    smooth = torch.randn(32, 8, 1, 1) * ramp.view(1, 1, 1, 5) + torch.randn(32, 8, 1, 1) * ramp.view(1, 1, 5, 1)
    smooth = smooth + 0.05 * torch.randn(32, 8, 5, 5)
    n, s = kernel_correlations(noise), kernel_correlations(smooth)
    assert float(n.abs().max()) < 0.35 and float(s.min()) > 0.5  # lag-1 autocorrelation along w and h
    assert torch.allclose(kernel_correlations(smooth, block=50), s, atol=1e-5)  # block by block, same answer
    assert torch.equal(kernel_correlations(torch.randn(8, 16)), torch.zeros(2))  # linear: no kernel
    assert torch.equal(kernel_correlations(torch.randn(8, 16, 1, 1)), torch.zeros(2))  # 1x1 conv: no neighbours
    assert float(kernel_correlations(torch.randn(8, 4, 7))[1]) == 0.0  # conv1d: only the w axis


def test_statistics_do_not_depend_on_the_order_of_units():
    """Permuting hidden units (rows and columns) leaves every statistic unchanged: the power iteration starts
    from the all-ones vector, so LIR's permutations are invisible to the statistics path."""
    torch.manual_seed(0)
    t = torch.randn(24, 40) * 0.1 + 0.3 * torch.outer(torch.randn(24), torch.randn(40)) / 10
    p = t[torch.randperm(24)][:, torch.randperm(40)]
    assert torch.allclose(part_stats(t), part_stats(p), atol=1e-5)


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (40, 30, 3, 3)])
def test_held_and_streamed_power_iteration_agree(shape, monkeypatch):
    """Parts up to HELD_ELEMS are converted once and iterated in memory, larger ones re-read block by block:
    the two paths compute the same statistics (up to float rounding), with or without a reused Scratch."""
    import model.stats as stats_mod

    monkeypatch.setattr(stats_mod, "COMPILED", False)  # the torch path's two ways (float64 parts take it)
    torch.manual_seed(1)
    t = (torch.randn(shape) * 0.05 + 0.4 * torch.outer(torch.randn(shape[0]), torch.randn(math.prod(shape[1:])))
         .reshape(shape) / 20).to(torch.bfloat16)
    scratch = stats_mod.Scratch()
    stats_mod.stats_and_scale(torch.randn(7, 5, dtype=torch.float64), scratch=scratch)  # another dtype and shape first
    held = stats_mod.stats_and_scale(t, block=1000, scratch=scratch)
    monkeypatch.setattr(stats_mod, "HELD_ELEMS", 0)
    streamed = stats_mod.stats_and_scale(t, block=1000)
    assert held.finite and streamed.finite
    assert torch.allclose(held.stats, streamed.stats, rtol=1e-5, atol=1e-5)
    assert held.divisor == pytest.approx(streamed.divisor, rel=1e-6)  # blocks in another order: rounding
    i = STAT_NAMES.index("log_spectral")
    assert float(held.stats[i]) > float(part_stats(t, power_iters=1)[i]) + 0.05  # the iterations did move it


def _outside_subsample(n: int) -> int:
    """A flat position `subsample` does not take (its indices are floor(i * n / SAMPLE))."""
    from model.stats import SAMPLE

    taken = set((torch.arange(SAMPLE, dtype=torch.float64) * (n / SAMPLE)).long().tolist())
    return next(i for i in range(n // 2, n) if i not in taken)


@pytest.mark.parametrize("path", ["compiled", "held", "streamed"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_non_finite_values_are_flagged_from_the_one_read(path, bad, dtype, monkeypatch):
    import model.stats as stats_mod

    monkeypatch.setattr(stats_mod, "COMPILED", path == "compiled")
    if path == "streamed":
        monkeypatch.setattr(stats_mod, "HELD_ELEMS", 0)
    t = (torch.randn(400, 300) * 0.02).to(dtype)
    assert stats_mod.stats_and_scale(t).finite
    t.view(-1)[_outside_subsample(t.numel())] = bad  # unseen by the subsample the shift and scale come from
    assert not stats_mod.stats_and_scale(t).finite


def test_an_outlier_overflowing_float32_is_only_a_suspect():
    """z = (x - shift) / scale of a finite outlier can overflow float32 when the subsample's std is tiny: the
    flag then asks for the exact check, which passes, and the statistics stay finite."""
    from model.stats import stats_and_scale

    t = torch.randn(400, 300) * 1e-20
    t.view(-1)[_outside_subsample(t.numel())] = 1e25
    s = stats_and_scale(t)
    assert not s.finite and bool(torch.isfinite(s.stats).all())


def test_relative_view_divides_the_shape_out():
    """Init-scale matrices of very different shapes: raw scales differ by nats, relative ones agree."""
    g = torch.Generator().manual_seed(0)
    shapes = [(32, 64), (1024, 256), (16, 3, 3, 3), (64, 64, 3, 3), (2000, 16)]
    raw, rel = [], []
    for shape in shapes:
        w = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))  # std 1/sqrt(fan_in)
        s = part_stats(w)
        raw.append(dict(zip(STAT_NAMES, s.tolist())))
        rel.append(dict(zip(STAT_NAMES, relative_view(s).tolist())))
    for name in ("log_std", "log_rms", "log_frobenius", "log_spectral"):
        assert max(r[name] for r in raw) - min(r[name] for r in raw) > 0.9, name  # the shapes show
        assert max(abs(r[name]) for r in rel) < 0.15, name  # in units of a random init of that shape
    for r in rel:
        assert -1.5 < r["log_stable_rank"] <= 1e-6  # a share of full rank
        assert r["log_fan_in"] == r["log_fan_out"] == r["log_numel"] == 0.0


def test_relative_view_keeps_a_vectors_scale():
    v = 1.0 + 0.1 * torch.randn(500, generator=torch.Generator().manual_seed(1))
    s = part_stats(v)
    r = relative_view(s)
    changed = {n for n, a, b in zip(STAT_NAMES, s.tolist(), r.tolist(), strict=True) if a != b}
    assert changed == {"log_frobenius", "log_fan_out", "log_numel"}  # log_fan_in is 0 already
    assert r[STAT_NAMES.index("log_frobenius")] == pytest.approx(float(s[STAT_NAMES.index("log_rms")]), abs=1e-5)
    assert r[STAT_NAMES.index("log_spectral")] == 0.0


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 5000),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(["float32", "bfloat16", "float16", "float64"]),
    ties=st.booleans(),
)
def test_quantiles_are_numpys_to_the_bit(n, seed, dtype, ties):
    """The one-sort quantiles equal np.quantile's on the float64 sample, for samples of every stored dtype
    (float32-exact ones sorted as float32), with and without repeated values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 10 ** float(torch.randint(-4, 4, (1,), generator=g))  # within float16
    if ties:
        x = x.round(decimals=1)
    stored = x.to(getattr(torch, dtype))
    sample = stored.to(torch.float64).numpy()
    assert quantiles(sample, dtype != "float64") == np.quantile(sample, QUANTILES).tolist()
