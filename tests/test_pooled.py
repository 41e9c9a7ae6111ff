"""The pooled-statistics baseline reads any architecture, and the fixed-architecture ones say n/a on a mixture."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.evaluation.baselines import baseline_predictions
from model.evaluation.metrics import kendall_tau
from model.evaluation.pooled import N_POOLED, pooled_features
from tests.nets import BUILDERS, state


def test_one_length_for_every_architecture():
    for name, build in BUILDERS.items():
        torch.manual_seed(0)
        net = build()
        with torch.no_grad():  # trained networks hold no constant tensors (a fresh LayerNorm does: its stats are NaN)
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        f = pooled_features(state(net))
        assert f.shape == (N_POOLED,), name
        assert np.isfinite(f[:8]).all() and f[-1] >= 1  # the first layer's weight statistics, the layer count


def _mlp(width: int, scale: float, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return state(net)


def test_mixed_widths_rank_with_pooled_and_are_na_for_fixed_arch_baselines():
    """A target that follows the weight scale is ranked well by the pooled GBM across widths 8..40."""
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.2, 2.0, 80)
    widths = rng.choice([8, 16, 24, 40], 80)
    states = [_mlp(int(w), float(s), i) for i, (w, s) in enumerate(zip(widths, scales))]
    y = (scales - 0.2) / 1.8  # accuracy-like target in [0, 1]
    pred = baseline_predictions(states[:60], y[:60], states[60:])
    assert pred["statnn"] is None and pred["mlp"] is None
    assert pred["pooled"] is not None and kendall_tau(pred["pooled"], y[60:]) > 0.6
    one_arch = [_mlp(16, float(s), i) for i, s in enumerate(scales[:30])]
    same = baseline_predictions(one_arch[:24], y[:24], one_arch[24:])
    assert all(same[m] is not None and same[m].shape == (6,) for m in ("pooled", "statnn", "mlp"))
