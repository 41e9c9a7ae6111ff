"""The training loop's robustness pieces: the ranking term, the learning-rate schedule, depth/kind augmentation."""
import itertools
import math

import torch

from model.chunking import ChunkedLayer
from model.layers import LayerKind
from model.training.examples import drop_layers, hide_kinds
from model.training.train import epoch_order, lr_factor, ranking_loss


def test_ranking_loss_rewards_the_right_order_only():
    target = torch.tensor([0.9, 0.5, 0.1])
    right = ranking_loss(torch.tensor([5.0, 0.0, -5.0]), target)
    wrong = ranking_loss(torch.tensor([-5.0, 0.0, 5.0]), target)
    assert float(right) < 0.01 and float(wrong) > 4.0
    # a constant prediction is not a way out: log 2 per pair
    assert math.isclose(float(ranking_loss(torch.zeros(3), target)), math.log(2), rel_tol=1e-6)
    # pairs closer than the margin carry no ranking signal, and give zero (not NaN) gradients
    logit = torch.tensor([1.0, -1.0], requires_grad=True)
    loss = ranking_loss(logit, torch.tensor([0.5, 0.505]))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(logit.grad, torch.zeros(2))


def test_ranking_loss_within_groups_ignores_pairs_across_them():
    # two families at different accuracy levels; within each, the logits rank right, across them wrong
    target = torch.tensor([0.9, 0.8, 0.3, 0.2])
    logit = torch.tensor([-1.0, -6.0, 6.0, 1.0])
    group = torch.tensor([0, 0, 1, 1])
    within = ranking_loss(logit, target, group=group)
    assert float(within) < 0.01  # two pairs, both ordered right by a margin of 5
    assert float(ranking_loss(logit, target)) > 2.0  # the four cross pairs are ordered wrong by 2 to 12
    # a batch with no ranked pair inside any group: zero, with zero (not NaN) gradients
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    loss = ranking_loss(x, torch.tensor([0.9, 0.1]), group=torch.tensor([0, 1]))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(x.grad, torch.zeros(2))


def test_balanced_epoch_draws_each_group_equally_often():
    group_of = torch.tensor([0] * 900 + [1] * 100)
    gen = torch.Generator().manual_seed(0)
    assert sorted(epoch_order(group_of, False, gen)) == list(range(1000))  # a plain permutation
    drawn = torch.tensor([i for _ in range(4) for i in epoch_order(group_of, True, gen)])  # 4 epochs of 1,000
    small = int((drawn >= 900).sum())
    assert 1700 < small < 2300  # about half of 4,000 draws (binomial sd 32), not a tenth as in the data
    assert drawn.unique().numel() > 600  # the large group is still seen widely


def test_lr_warms_up_then_decays_to_zero():
    total, warm = 1000, 0.05
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == 1 / 50 and f[49] == 1.0  # linear warm-up over 5 % of the steps
    assert all(a >= b for a, b in itertools.pairwise(f[49:]))  # then only down
    assert f[-1] < 1e-4 and math.isclose(f[50 + 475], 0.5, abs_tol=0.01)  # cosine: half way at the middle


def test_layer_drop_keeps_the_ends_and_renumbers_depth():
    # levels 0..4, level 2 shared by a conv and its norm (dropped together)
    layers = [ChunkedLayer(f"l{i}", LayerKind.CONV2D, lv, []) for i, lv in enumerate([0, 1, 2, 2, 3, 4])]
    gen = torch.Generator().manual_seed(0)
    assert drop_layers(layers, 0.0, gen) is layers
    seen = set()
    for _ in range(200):
        out = drop_layers(layers, 0.5, gen)
        names = [la.name for la in out]
        assert names[0] == "l0" and names[-1] == "l5"  # the first and last depth are never dropped
        assert ("l2" in names) == ("l3" in names)  # a depth level goes as a whole
        assert sorted({la.level for la in out}) == list(range(len({la.level for la in out})))  # 0..k, no gaps
        seen.add(len(out))
    assert seen == {2, 3, 4, 5, 6}  # every number of middle levels 0..3 kept occurs
    assert [la.name for la in drop_layers(layers, 1.0, gen)] == ["l0", "l5"]


def test_kind_drop_hides_kinds_only():
    layers = [ChunkedLayer(f"l{i}", LayerKind.CONV2D, i, []) for i in range(8)]
    gen = torch.Generator().manual_seed(0)
    assert hide_kinds(layers, 0.0, gen) is layers
    hidden = 0
    for _ in range(100):
        out = hide_kinds(layers, 0.5, gen)
        assert [(la.name, la.level) for la in out] == [(la.name, la.level) for la in layers]  # names, depth kept
        assert {la.kind for la in out} <= {LayerKind.CONV2D, LayerKind.OTHER}
        hidden += sum(la.kind is LayerKind.OTHER for la in out)
    assert 300 < hidden < 500  # about half of 800
    assert {la.kind for la in hide_kinds(layers, 1.0, gen)} == {LayerKind.OTHER}
