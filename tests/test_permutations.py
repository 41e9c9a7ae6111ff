"""Permutations derived from a checkpoint alone leave real networks' outputs unchanged, or are refused with a reason."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model.training.permutations import (
    PermutationPlan,
    permute_state,
    plan_permutations,
)
from model.zoo.archs import build_arch
from tests.nets import BUILDERS, state


def mixed_mlp() -> nn.Module:
    """Widths 64 -> 37 -> 23 -> 11 -> 10 with a LayerNorm and a BatchNorm1d between layers."""
    return nn.Sequential(
        nn.Linear(64, 37), nn.LayerNorm(37), nn.GELU(), nn.Linear(37, 23), nn.BatchNorm1d(23), nn.ReLU(),
        nn.Dropout(0.1), nn.Linear(23, 11), nn.Tanh(), nn.Linear(11, 10),
    )


def small_cnn() -> nn.Module:
    """conv-BN-relu-pool twice, a flatten of 6 channels x 2 x 2 into a linear layer, then the classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(5, 6, 2), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(24, 13), nn.ReLU(), nn.Linear(13, 10),
    )


def _trained_stats(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """A few train-mode passes so BatchNorm's running statistics are far from their initial 0/1."""
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(x * 3 + 1)
    return net.eval()


@pytest.mark.parametrize(("build", "x_shape"), [
    (mixed_mlp, (32, 64)), (small_cnn, (32, 1, 8, 8)), (lambda: build_arch("arch2"), (32, 1, 28, 28)),
    (lambda: build_arch("arch1"), (32, 1, 8, 8)),
])
def test_permutation_keeps_outputs_and_moves_weights(build, x_shape):
    torch.manual_seed(0)
    net = build()
    x = torch.randn(*x_shape)
    net = _trained_stats(net, x)
    before = state(net)
    plan = plan_permutations(before)
    assert isinstance(plan, PermutationPlan), plan
    with torch.no_grad():
        y = net(x)
    permuted = permute_state(before, plan, torch.Generator().manual_seed(3))
    moved = [k for k in before if not torch.equal(before[k], permuted[k])]
    # every hidden layer's weight moved (the output layer's rows did not: class order is kept)
    assert len(moved) >= 2 * len(plan.hidden)
    net.load_state_dict(permuted)
    with torch.no_grad():
        y_perm = net(x)
    assert (y - y_perm).abs().max() < 1e-4 * (1 + y.abs().max())
    assert torch.equal(state(net)[k := next(iter(before))], permuted[k])


def test_a_wrong_permutation_would_be_caught():
    """The output check above is sharp: permuting a layer's rows without the next layer's inputs changes outputs."""
    torch.manual_seed(0)
    net = mixed_mlp().eval()
    x = torch.randn(16, 64)
    with torch.no_grad():
        y = net(x)
    broken = state(net)
    broken["0.weight"] = broken["0.weight"].flip(0)
    net.load_state_dict(broken)
    with torch.no_grad():
        assert (net(x) - y).abs().max() > 1e-2


def test_norm_statistics_move_with_their_units():
    torch.manual_seed(0)
    net = _trained_stats(small_cnn(), torch.randn(8, 1, 8, 8))
    plan = plan_permutations(state(net))
    assert isinstance(plan, PermutationPlan)
    first = plan.hidden[0]
    assert set(first.direct) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    assert plan.hidden[1].k == 4 and plan.hidden[1].next_weight == "9.weight"  # 6 channels x 2 x 2 -> 24 inputs


@pytest.mark.parametrize(("name", "why"), [("resnet", "residual"), ("transformer", "in_proj_weight")])
def test_unsafe_structure_is_refused_with_a_reason(name, why):
    torch.manual_seed(0)
    reason = plan_permutations(state(BUILDERS[name]()))
    assert isinstance(reason, str) and why in reason


def test_shapes_that_do_not_connect_are_refused():
    s = {"a.weight": torch.zeros(8, 4), "b.weight": torch.zeros(3, 7)}
    reason = plan_permutations(s)
    assert isinstance(reason, str) and "not one chain" in reason
    assert isinstance(plan_permutations({"a.weight": torch.zeros(8, 4)}), str)  # no hidden layer


def test_lir_coverage_counts_what_it_skips(tmp_path):
    """A labelled mixture: the MLPs are permuted by LIR, the ResNet and the transformer are skipped with reasons."""
    from model.training import load_split
    from model.training.lir import lir_coverage
    from tests.nets import checkpoint_file

    names = ["mlp", "mlp", "resnet", "transformer"]
    files = [checkpoint_file(tmp_path, n, seed=i) for i, n in enumerate(names)]
    (tmp_path / "labels.csv").write_text("path,accuracy,split\n" + "".join(f"{f.name},0.5,train\n" for f in files))
    cov = lir_coverage(load_split([tmp_path / "labels.csv"], "train", 16).examples)
    assert cov["permutable"] == 2 and cov["skipped"] == 2
    assert sorted(cov["reasons"].values()) == [1, 1] and any("residual" in r for r in cov["reasons"])
