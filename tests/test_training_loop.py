"""The training loop's robustness pieces: the ranking term and the learning-rate schedule."""
import itertools
import math

import torch

from model.training.train import lr_factor, ranking_loss


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


def test_lr_warms_up_then_decays_to_zero():
    total, warm = 1000, 0.05
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == 1 / 50 and f[49] == 1.0  # linear warm-up over 5 % of the steps
    assert all(a >= b for a, b in itertools.pairwise(f[49:]))  # then only down
    assert f[-1] < 1e-4 and math.isclose(f[50 + 475], 0.5, abs_tol=0.01)  # cosine: half way at the middle
