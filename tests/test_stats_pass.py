"""The compiled statistics pass (model.stats_pass) against the torch path it replaces for 32- and 16-bit parts."""
import math

import numpy as np
import pytest
import torch

import model.stats as stats_mod
from model import stats_pass
from model.stats import STAT_NAMES, stats_and_scale


def _torch_path(t: torch.Tensor, monkeypatch) -> stats_mod.PartStats:
    with monkeypatch.context() as m:
        m.setattr(stats_mod, "COMPILED", False)
        return stats_and_scale(t)


def _part(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0, scale: float = 0.05) -> torch.Tensor:
    """Heavy-tailed, shifted values with one dominant direction (as trained weights have)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(5.0).sample(shape) * scale + scale / 5
    if len(shape) >= 2:
        rows, cols = shape[0], math.prod(shape[1:])
        t += (8 * scale * torch.outer(torch.randn(rows, generator=g), torch.randn(cols, generator=g)) / math.sqrt(rows * cols)).reshape(shape)
    return t.to(dtype)


SHAPES = [(300, 40), (40, 300), (64, 64), (16, 8, 3, 3), (2, 5000), (5000, 2), (1, 700), (700, 1), (9000,), (4096,), (3,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_compiled_pass_matches_the_torch_path(shape, dtype, monkeypatch):
    """Every statistic, the divisor and the finite flag agree for tall and wide matrices (the two orientations
    of the power iteration), conv kernels, degenerate matrices and vectors shorter and longer than one row."""
    t = _part(shape, dtype)
    assert stats_pass.readable(t)
    ref, got = _torch_path(t, monkeypatch), stats_and_scale(t)
    assert got.finite and ref.finite
    diff = (got.stats - ref.stats).abs()
    assert float(diff.max()) < 2e-5, STAT_NAMES[int(diff.argmax())]
    assert got.divisor == pytest.approx(ref.divisor, rel=1e-6)


def test_the_power_iteration_runs_in_both_orientations(monkeypatch):
    """Four iterations move the spectral estimate well above one iteration's, in the same way on both paths,
    for a matrix and its transpose (rows the long side, then the short side)."""
    i = STAT_NAMES.index("log_spectral")
    for t in (_part((400, 60), torch.bfloat16, 3), _part((60, 400), torch.bfloat16, 3)):
        one = float(stats_and_scale(t, power_iters=1).stats[i])
        four = float(stats_and_scale(t).stats[i])
        assert four > one + 0.02  # (float rounding moves it by 1e-7)
        assert four == pytest.approx(float(_torch_path(t, monkeypatch).stats[i]), abs=1e-5)
        exact = math.log(torch.linalg.matrix_norm(t.double(), 2))
        assert exact - 0.05 < four <= exact + 1e-5  # a lower bound, close for a dominant direction


def test_float16_subnormals_and_extremes_are_read_exactly(monkeypatch):
    """fp16 values are looked up from their bits: subnormals, the largest finite value and signs included."""
    t = torch.tensor([6e-8, -6e-8, 3e-5, -3e-5, 65504.0, -65504.0, 0.5, -0.0] * 40, dtype=torch.float16).view(20, 16)
    ref, got = _torch_path(t, monkeypatch), stats_and_scale(t)
    assert torch.allclose(got.stats, ref.stats, rtol=1e-5, atol=1e-5)


def test_result_does_not_depend_on_the_thread_count():
    """Rows are summed in fixed groups: 1 and 2 threads give the same bits."""
    t = _part((1024, 512), torch.bfloat16, 5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = stats_and_scale(t)
        torch.set_num_threads(2)
        two = stats_and_scale(t)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.stats, two.stats) and one.divisor == two.divisor


def test_float64_and_non_contiguous_parts_take_the_torch_path():
    assert not stats_pass.readable(torch.zeros(4, 4, dtype=torch.float64))
    assert not stats_pass.readable(torch.zeros(4, 6).T)
    assert stats_pass.readable(torch.zeros(4, 4, requires_grad=True))  # read detached
    s = stats_and_scale(torch.randn(30, 20, requires_grad=True))
    assert s.finite and bool(torch.isfinite(s.stats).all())


def test_warm_up_loads_every_dtype():
    assert stats_pass.warm_up() >= 0.0
    for dtype in stats_pass.KINDS:
        assert stats_and_scale(torch.ones(3, 3, dtype=dtype)).finite


def test_loops_compile_without_a_cache_location():
    """Where numba has nowhere to cache (here: a function with no source file, as in a read-only image with a
    read-only home) the loops are compiled in the process instead of failing the import."""
    import numba

    scope: dict = {}
    exec("def twice(a):\n    return 2 * a\n", scope)
    with pytest.raises(RuntimeError, match="no locator"):
        numba.njit(cache=True)(scope["twice"])
    assert stats_pass._compiled(False)(scope["twice"])(21) == 42


@pytest.mark.parametrize("shape", [(64, 48), (48, 64)])
def test_values_near_float32s_range_match_the_torch_path(shape, monkeypatch):
    """The power-iteration passes read rows unscaled and fold the scale in afterwards; rows whose unscaled dot
    product overflows float32 (values ~1e37) are scaled first, so the estimate stays what the torch path gives."""
    t = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 1e37
    ref, got = _torch_path(t, monkeypatch), stats_and_scale(t)
    assert bool(torch.isfinite(got.stats).all()) and got.stats[STAT_NAMES.index("log_spectral")] > 80  # ~log(1e37)
    assert torch.allclose(got.stats, ref.stats, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (5000,)])
def test_extremes_are_exact_for_every_dtype(dtype, shape):
    """Min and max come from order keys of the stored bits (16-bit rows in the load loop): exactly the
    extreme values, scaled and shifted in float32 as the moments' values are."""
    t = _part(shape, dtype, 3)
    t.view(-1)[7], t.view(-1)[-3] = -0.0, 0.0
    shift, scale = 0.004, 0.03
    got = stats_pass.moments_and_rayleigh(t, shift, scale, 2)
    inv, sz = np.float32(1.0 / scale), np.float32(shift / scale)
    x = t.float().numpy()
    assert got.finite
    for value, want in ((got.lo, x.min()), (got.hi, x.max())):
        ref = np.float32(np.float32(want) * inv) - sz
        # to one rounding (the scale's multiply may fuse with the shift); neighbouring stored values lie
        # 1e3 times further apart, so the wrong element would fail
        assert abs(value - float(ref)) <= 2 * abs(float(np.spacing(ref))), (value, ref)


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (64, 64), (16, 8, 3, 3), (2, 5000), (5000, 2), (37, 1021)], ids=str)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_a_half_precision_part_and_its_float32_upcast_agree(half, shape):
    """The power passes convert as they read, in a loop per dtype, so a bf16 part and the same values stored as
    float32 may sum in another order: they must agree to float32 rounding (a mis-read value is far off)."""
    t = _part(shape, half, seed=7)
    a, b = stats_and_scale(t), stats_and_scale(t.float())
    assert torch.allclose(a.stats, b.stats, rtol=1e-6, atol=1e-6) and a.divisor == pytest.approx(b.divisor, rel=1e-6)


def test_a_row_whose_dot_product_overflows_inside_a_block_is_scaled_alone(monkeypatch):
    """Rows go eight at a time (256 rows: 16 groups of two blocks); one of them near float32's range (its
    unscaled dot product is -inf) takes the scaled path and its own `acc` update, the other seven the block's:
    the result still matches torch's."""
    t = _part((256, 48), torch.float32, seed=3)
    t[13] = 1e38 * torch.sign(t[13])  # row 13: the first group's second block, its sixth row
    got, ref = stats_and_scale(t), _torch_path(t, monkeypatch)
    assert math.isfinite(got.stats[STAT_NAMES.index("log_spectral")])
    assert torch.allclose(got.stats, ref.stats, rtol=1e-5, atol=2e-5)
    clean = stats_and_scale(torch.where(torch.arange(256)[:, None] == 13, 0.0, t))
    assert not torch.allclose(got.stats, clean.stats, atol=1e-2)  # the row counted
