"""The statistics set model learns a statistic-driven accuracy across networks of different depths and widths."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from model.evaluation.metrics import kendall_tau
from model.evaluation.statset import StatSetModel, statset_fit_predict


def _nets(n: int, seed: int) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """MLP state dicts of 2-4 layers and random widths; 'accuracy' is a monotone function of the weights' scale."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    states, acc = [], []
    for _ in range(n):
        scale = float(rng.uniform(0.05, 1.0))
        dims = [64] + [int(rng.choice([16, 32, 48])) for _ in range(int(rng.integers(1, 4)))] + [10]
        state = {}
        for i, (a, b) in enumerate(pairwise(dims)):
            state[f"layers.{i}.weight"] = torch.randn(b, a, generator=g) * scale / a**0.5
            state[f"layers.{i}.bias"] = torch.randn(b, generator=g) * 0.01
        states.append(state)
        acc.append(0.1 + 0.85 * scale + float(rng.normal(0, 0.03)))
    return states, np.clip(np.array(acc), 0, 1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_statset_ranks_held_out_networks() -> None:
    tr_s, tr_y = _nets(240, 0)
    te_s, te_y = _nets(80, 1)
    pred = statset_fit_predict(tr_s, tr_y, te_s, epochs=25)
    assert pred.shape == (80,) and np.all((pred >= 0) & (pred <= 1))
    assert kendall_tau(pred, te_y) > 0.6  # the scale is visible in every layer's log-std token


def test_statset_errors() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        StatSetModel().predict([np.zeros((2, 22))])
    with pytest.raises(ValueError, match="networks"):
        StatSetModel().fit([np.zeros((2, 22))], [0.5, 0.6])
