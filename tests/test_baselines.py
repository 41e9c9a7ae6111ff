"""STATNN and flat-weight MLP baselines (model/evaluation/baselines.py) on tiny synthetic state dicts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.evaluation.baselines import (
    FlatMLP,
    StatNN,
    fit_predict,
    flat_features,
    statnn_features,
)
from model.evaluation.metrics import kendall_tau

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny CNN-like state dict: 6 floating tensors, 754 parameters
SHAPES: dict[str, tuple[int, ...]] = {
    "features.0.weight": (8, 1, 3, 3),
    "features.0.bias": (8,),
    "features.3.weight": (8, 8, 3, 3),
    "features.3.bias": (8,),
    "classifier.weight": (10, 8),
    "classifier.bias": (10,),
}
N_PARAMS = sum(int(np.prod(s)) for s in SHAPES.values())


def synthetic_zoo(n: int, seed: int = 0, shapes: dict = SHAPES) -> tuple[list[dict], np.ndarray]:
    """Each tensor = shift + scale * noise (random per tensor); accuracy = sigmoid(3 * mean of features.3.weight)."""
    g = torch.Generator().manual_seed(seed)
    states, accs = [], []
    for _ in range(n):
        st = {}
        for k, sh in shapes.items():
            scale = float(torch.empty(()).uniform_(np.log(0.3), np.log(3.0), generator=g).exp())
            shift = float(torch.randn((), generator=g))
            st[k] = shift + scale * torch.randn(sh, generator=g)
        accs.append(float(torch.sigmoid(3 * st["features.3.weight"].mean())))
        states.append(st)
    return states, np.array(accs)


# ------------------------------------------------------------------------------------------------ features


def test_statnn_features_values_and_length() -> None:
    state = {"w": torch.arange(5.0), "steps": torch.tensor(7), "b": torch.zeros(3)}  # int buffer skipped
    f = statnn_features(state)
    assert f.shape == (7 * 2,) and f.dtype == np.float64
    np.testing.assert_allclose(f[:7], 0.0)  # "b" sorts before "w"
    np.testing.assert_allclose(f[7:], [2.0, 2.0, 0.0, 1.0, 2.0, 3.0, 4.0])  # mean var min q25 med q75 max
    states, _ = synthetic_zoo(1)
    assert statnn_features(states[0]).shape == (7 * len(SHAPES),)


def test_features_natural_order() -> None:
    keys = ["blocks.10.weight", "blocks.2.weight", "blocks.1.bias", "blocks.1.weight", "head.weight"]
    state = {k: torch.full((2, 2), float(i)) for i, k in enumerate(keys)}
    state["blocks.1.num_batches_tracked"] = torch.tensor(3, dtype=torch.long)
    # natural order: blocks.1.bias, blocks.1.weight, blocks.2.weight, blocks.10.weight, head.weight
    expected = [2.0, 3.0, 1.0, 0.0, 4.0]
    means = statnn_features(state).reshape(-1, 7)[:, 0]
    np.testing.assert_array_equal(means, expected)
    flat = flat_features(state)
    assert flat.shape == (4 * len(keys),) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat, np.repeat(expected, 4))


def test_flat_features_length() -> None:
    states, _ = synthetic_zoo(2)
    assert flat_features(states[0]).shape == (N_PARAMS,)
    with pytest.raises(ValueError, match="floating"):
        flat_features({"n": torch.tensor([1, 2])})


# ----------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def zoo() -> tuple[list[dict], np.ndarray]:
    return synthetic_zoo(500, seed=0)


@pytest.mark.parametrize("method", ["statnn", "mlp"])
def test_learns_monotone_weight_statistic(zoo, method: str) -> None:
    states, acc = zoo
    pred = fit_predict(method, states[:400], acc[:400], states[400:], seed=0)
    assert pred.shape == (100,)
    assert np.all((pred >= 0) & (pred <= 1))
    assert kendall_tau(pred, acc[400:]) > 0.6


def test_flat_mlp_deterministic() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 50)).astype(np.float32)
    y = 1 / (1 + np.exp(-X[:, 0]))
    kw = {"hidden": (32, 16), "max_epochs": 5, "seed": 3}
    before = torch.get_rng_state()
    p1 = FlatMLP(**kw).fit(X[:100], y[:100]).predict(X[100:])
    p2 = FlatMLP(**kw).fit(X[:100], y[:100]).predict(X[100:])
    np.testing.assert_array_equal(p1, p2)
    assert torch.equal(before, torch.get_rng_state())  # global RNG untouched


def test_statnn_handles_diverged_networks() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 14))
    y = 1 / (1 + np.exp(-X[:, 0]))
    X[:10, 1:] = np.inf  # diverged: non-finite statistics
    X[10:15, 2] = np.nan
    pred = StatNN(max_iter=50).fit(X, y).predict(X)
    assert np.all(np.isfinite(pred)) and np.all((pred >= 0) & (pred <= 1))


# ---------------------------------------------------------------------------------------- wrong inputs


def test_mismatched_architecture_raises(zoo) -> None:
    states, acc = zoo
    other_shapes = dict(SHAPES, **{"classifier.0.weight": (20, 8), "classifier.0.bias": (20,)})
    other, _ = synthetic_zoo(3, seed=1, shapes=other_shapes)
    for method, params in (("statnn", {"max_iter": 5}), ("mlp", {"max_epochs": 1})):
        with pytest.raises(ValueError, match="architecture"):
            fit_predict(method, states[:40], acc[:40], other, **params)
    model = StatNN(max_iter=5).fit(np.stack([statnn_features(s) for s in states[:40]]), acc[:40])
    with pytest.raises(ValueError, match="architecture"):
        model.predict(statnn_features(other[0]))
    mlp = FlatMLP(hidden=(8,), max_epochs=1).fit(np.stack([flat_features(s) for s in states[:40]]), acc[:40])
    with pytest.raises(ValueError, match="architecture"):
        mlp.predict(flat_features(other[0]))


def test_bad_inputs_raise(zoo) -> None:
    states, acc = zoo
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_predict("ridge", states[:10], acc[:10], states[10:12])
    with pytest.raises(ValueError, match="mix architectures"):
        other, _ = synthetic_zoo(1, shapes={"features.3.weight": (3,)})
        fit_predict("statnn", states[:10] + other, np.r_[acc[:10], 0.5], states[10:12])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StatNN().fit(np.zeros((5, 3)), [0.1, 0.2, 1.5, 0.3, 0.4])
    with pytest.raises(RuntimeError, match="not fitted"):
        FlatMLP().predict(np.zeros((2, 3)))
