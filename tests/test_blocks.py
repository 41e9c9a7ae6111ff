"""Set Transformer blocks: the set properties they promise, and the packed-segment runner."""
import pytest
import torch

from model.blocks import ISAB, PMA, SAB, SetStack, segment_apply


@pytest.fixture(autouse=True)
def _seed(one_thread):
    torch.manual_seed(0)


def test_sab_isab_are_permutation_equivariant_and_pma_invariant():
    x = torch.randn(3, 20, 8)
    perm = torch.randperm(20)
    for block in (SAB(8, 8, 2, True), ISAB(8, 8, 2, True, inducing=4)):
        assert torch.allclose(block(x)[:, perm], block(x[:, perm]), atol=1e-5)
    pma = PMA(8, 8, 2, True)
    assert torch.allclose(pma(x), pma(x[:, perm]), atol=1e-5)
    assert pma(x).shape == (3, 8)


@pytest.mark.parametrize("inducing", [0, 4])
def test_masked_padding_equals_the_unpadded_set(inducing):
    stack = SetStack(8, 8, 6, blocks=2, heads=2, ln=True, inducing=inducing)
    x = torch.randn(1, 7, 8)
    padded = torch.cat([x, torch.randn(1, 5, 8) * 50], 1)  # [1, 12, 8]: garbage after 7 real elements
    mask = torch.arange(12)[None] < 7
    assert torch.allclose(stack(padded, mask), stack(x), atol=1e-5)
    assert not torch.allclose(stack(padded), stack(x), atol=1e-3)  # without the mask the garbage shows


def test_isab_cost_does_not_build_an_n_by_n_attention():
    """ISAB attends n elements over m inducing points: a set too large for n x n scores still runs."""
    isab = ISAB(4, 4, 1, False, inducing=2)
    x = torch.randn(1, 200_000, 4)  # n^2 scores would be 160 GB
    with torch.no_grad():
        assert isab(x).shape == (1, 200_000, 4)


@pytest.mark.parametrize("slice_tokens", [64, 100_000])
def test_segment_apply_equals_a_loop_over_segments(slice_tokens):
    stack = SetStack(3, 4, 4, blocks=1, heads=1, ln=False, inducing=2)
    lengths = torch.tensor([1, 5, 3, 70, 5, 130, 2])  # exact groups and power-of-two buckets
    start = torch.cumsum(lengths, 0) - lengths
    x = torch.randn(int(lengths.sum()), 3)
    with torch.no_grad():
        out = segment_apply(lambda d, m, _: stack(d, m), x, start, lengths, slice_tokens)
        loop = torch.cat([stack(x[s : s + n][None]) for s, n in zip(start.tolist(), lengths.tolist())])
    assert out.shape == (7, 4)
    assert torch.allclose(out, loop, atol=1e-5)


def test_segment_apply_refuses_empty_segments():
    with pytest.raises(ValueError, match="at least one"):
        segment_apply(lambda d, m, _: d.sum(1), torch.randn(3, 2), torch.tensor([0, 3]), torch.tensor([3, 0]), 64)
