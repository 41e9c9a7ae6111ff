"""Pair statistics (`model.pairs`): how each weight lines up with the previous one, and how SNE reads them."""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from model.admission import Limits
from model.checkpoint import load_checkpoint
from model.chunking import chunk_checkpoint, chunk_file, chunk_state
from model.config import SNEConfig
from model.packing import pack
from model.pairs import MAX_UNITS, N_PAIR, PAIR_NAMES, PairTracker, feeds_next, in_gram, out_gram, pair_stats
from model.sne import SNE
from tests.nets import BUILDERS, checkpoint_bytes, checkpoint_file

ALIGN, GAIN, PRESENT = (PAIR_NAMES.index(n) for n in ("pair_gram_align", "pair_log_gain", "pair_present"))


def _pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return pair_stats(out_gram(a), in_gram(b))


def _aligned(units: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair where the second layer reads the directions the first writes: W_b = R W_a^T with a random R."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(units, 48, generator=g) * torch.linspace(0.2, 3.0, units)[:, None]  # units of unequal norms
    a[: units // 2] += 2.0 * torch.randn(1, 48, generator=g)  # a shared direction: correlated output units
    b = torch.randn(10, 48, generator=g) @ a.T / 48  # [10, units]
    return a, b


def test_independent_layers_score_about_zero_and_aligned_ones_high():
    g = torch.Generator().manual_seed(1)
    rand = [_pair(torch.randn(64, 48, generator=g), torch.randn(10, 64, generator=g)) for _ in range(8)]
    align = torch.stack(rand)[:, ALIGN]
    gain = torch.stack(rand)[:, GAIN]
    assert float(align.abs().max()) < 0.15 and float(gain.abs().max()) < 0.15
    a, b = _aligned()
    got = _pair(a, b)
    assert float(got[ALIGN]) > 0.6 and float(got[GAIN]) > 0.5 and float(got[PRESENT]) == 1.0


def test_invariant_to_permuting_the_hidden_units_between_the_two_layers():
    a, b = _aligned()
    perm = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(3))
    base, moved = _pair(a, b), _pair(a[perm], b[:, perm])
    assert torch.allclose(base, moved, atol=1e-5)
    # permuting only one side breaks the correspondence: the statistic is about the pair, not each layer
    broken = _pair(a, b[:, perm])
    assert float(base[ALIGN] - broken[ALIGN]) > 0.5


def test_conv_pairs_sum_over_kernel_positions_and_match_a_direct_computation():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(8, 3, 3, 3, generator=g), torch.randn(16, 8, 3, 3, generator=g)
    m = a.reshape(8, -1).double() @ a.reshape(8, -1).double().T
    n = sum(b[:, :, i, j].double().T @ b[:, :, i, j].double() for i in range(3) for j in range(3))
    assert torch.allclose(out_gram(a), m) and torch.allclose(in_gram(b), n)
    off = ~torch.eye(8, dtype=torch.bool)
    cos = (m[off] * n[off]).sum() / (m[off].norm() * n[off].norm())
    assert float(_pair(a, b)[ALIGN]) == pytest.approx(float(cos), abs=1e-6)


def test_no_pair_where_shapes_do_not_connect_or_layers_are_too_wide():
    wide = MAX_UNITS + 1
    weights = [torch.randn(32, 10), torch.randn(5, 32), torch.randn(7, 6), torch.randn(4), torch.randn(3, 7),
               torch.randn(wide, 3), torch.randn(2, wide)]
    tr = PairTracker([w.shape for w in weights])
    got = [tr.step(i, w) for i, w in enumerate(weights)]
    assert not got[0].any()  # the first weight has no predecessor
    assert float(got[1][PRESENT]) == 1.0
    assert not got[2].any()  # 6 inputs after 5 outputs: not connected
    assert not got[3].any()  # vectors (norms, biases) are skipped ...
    assert float(got[4][PRESENT]) == 1.0  # ... and do not break the chain
    assert not got[6].any()  # bounded cost: no Gram of more than MAX_UNITS units


def test_only_weights_whose_outputs_are_read_get_an_output_gram():
    assert feeds_next([(8, 3), None, (4,), (6, 8), (5, 7), (2, 5, 3, 3)]) == [True, False, False, False, True, False]
    assert feeds_next([]) == []


@pytest.mark.parametrize("name", list(BUILDERS))
def test_file_and_in_memory_paths_give_the_same_pairs(tmp_path, name):
    path = checkpoint_file(tmp_path, name, seed=2)
    from_file = chunk_file(path, 16, Limits.unbudgeted(), b"").layers
    in_memory = chunk_checkpoint(load_checkpoint(path.read_bytes()), 16)
    from_state = chunk_state(load_file(path), 16, Limits.unbudgeted()).layers
    for x, y, z in zip(from_file, in_memory, from_state, strict=True):
        assert x.name == y.name == z.name
        assert torch.equal(x.pair, y.pair) and torch.equal(x.pair, z.pair), x.name
    present = [la for la in from_file if la.pair[PRESENT] == 1.0]
    assert present, f"{name}: no connected pair of layers found"


def test_a_read_without_pairs_leaves_them_zero_and_everything_else_equal(tmp_path):
    path = checkpoint_file(tmp_path, "resnet", seed=3)
    on = chunk_file(path, 16, Limits(), b"s").layers
    off = chunk_file(path, 16, Limits(), b"s", with_pairs=False).layers
    assert any(la.pair[PRESENT] == 1.0 for la in on)  # this net has connected pairs to skip
    for a, b in zip(on, off, strict=True):
        assert torch.equal(b.pair, torch.zeros(N_PAIR))
        assert a.name == b.name and len(a.parts) == len(b.parts)
        for (ra, ca), (rb, cb) in zip(a.parts, b.parts, strict=True):
            assert ra == rb and torch.equal(ca.values, cb.values) and torch.equal(ca.stats, cb.stats)


def test_the_service_reads_pairs_only_for_an_encoder_that_uses_them(tmp_path):
    from app.parsing import parse_upload
    from model.predictor import Predictor

    path = checkpoint_file(tmp_path, "resnet", seed=4)
    for on in (False, True):
        torch.manual_seed(0)
        pred = Predictor(SNE(_pair_cfg(on)).eval(), Predictor.untrained().card.model_dump())
        parsed = parse_upload(path, "0" * 64, pred, Limits())
        assert any(la.pair[PRESENT] == 1.0 for la in parsed.chunked) is on
        if not on:  # an encoder without the pair path: reading them or not gives the same bits
            full = chunk_file(path, 16, Limits(), "0" * 64).layers
            assert pred.predict_packed(pack([parsed.chunked]))[0].accuracy == pred.predict_packed(pack([full]))[0].accuracy


def _pair_cfg(on: bool) -> SNEConfig:
    return SNEConfig(name="t", chunk_size=16, hidden=16, encoding=16, heads=2, inducing=4, head_hidden=16, pair_stats=on)


@torch.no_grad()
def test_sne_reads_pairs_only_when_configured():
    layers = chunk_checkpoint(load_checkpoint(checkpoint_bytes("resnet", seed=5)), 16)
    assert any(la.pair[PRESENT] == 1.0 for la in layers)
    moved = [replace(la, pair=la.pair + torch.tensor([0.5, 1.0, 0.0])) for la in layers]
    torch.manual_seed(0)
    on = SNE(_pair_cfg(True)).eval()
    assert float((on(pack([layers])).logit - on(pack([moved])).logit).abs()) > 1e-4
    torch.manual_seed(0)
    off = SNE(_pair_cfg(False)).eval()
    assert torch.equal(off(pack([layers])).logit, off(pack([moved])).logit)
    assert not any(k.startswith("pair_proj") for k in off.state_dict())  # older predictors load unchanged
    assert pack([layers]).layer_pair.shape == (len(layers), N_PAIR)


@pytest.mark.parametrize(
    "scale, dtype", [(0.0, torch.float32), (1e30, torch.float32), (1e-30, torch.float32), (1e200, torch.float64)]
)
def test_extreme_values_give_finite_statistics(scale, dtype):
    """All-zero layers, values whose products overflow or underflow float32, float64 values beyond float32's
    range: the statistics stay finite (an uninformative 0 where the Grams cannot be formed), never NaN/Inf."""
    g = torch.Generator().manual_seed(6)
    a = (torch.randn(16, 8, generator=g, dtype=torch.float64) * scale).to(dtype)
    b = (torch.randn(4, 16, generator=g, dtype=torch.float64) * scale).to(dtype)
    got = _pair(a, b)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all()) and float(got[PRESENT]) == 1.0
    assert float(got[ALIGN].abs()) <= 1.0
