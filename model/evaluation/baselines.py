"""The two fixed-architecture baselines of the SNE paper.

- STATNN (Unterthiner et al. 2020): per floating tensor, 7 statistics (mean, variance, min, 25 %, median,
  75 %, max), concatenated; a gradient-boosted tree regressor predicts test accuracy.
- FlatMLP: a small MLP on all weights flattened into one vector.

Both need every checkpoint to have the same tensors (one architecture): a feature vector of another length
at predict time raises ``ValueError``. Tensors are ordered by natural sort of their keys (``blocks.2``
before ``blocks.10``, ``model.checkpoint.natural_key``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits
from torch import nn

from model.checkpoint import natural_key

__all__ = [
    "FlatMLP",
    "StatNN",
    "fit_predict",
    "flat_features",
    "statnn_features",
]

_QUANTILES = np.array([0.0, 0.25, 0.5, 0.75, 1.0])

State = Mapping[str, torch.Tensor]


def _float_tensors(state: State) -> list[tuple[str, torch.Tensor]]:
    """Floating tensors of a state dict in natural key order (integer/bool buffers are skipped)."""
    out = [(k, state[k]) for k in sorted(state, key=natural_key) if torch.is_floating_point(state[k])]
    if not out:
        raise ValueError("state dict has no floating-point tensors")
    return out


def statnn_features(state: State) -> np.ndarray:
    """STATNN features: [mean, var, min, q25, median, q75, max] of each floating tensor, concatenated.

    Length ``7 * n_floating_tensors``; statistics in float64 (variance with ddof=0, quantiles linear).
    Non-finite weights give non-finite features; ``StatNN`` treats those as missing values.
    """
    feats = []
    for key, t in _float_tensors(state):
        x = t.detach().to("cpu", torch.float64).reshape(-1).numpy()
        if x.size == 0:
            raise ValueError(f"tensor {key!r} is empty")
        with np.errstate(all="ignore"):
            qs = np.quantile(x, _QUANTILES)
            feats.append([x.mean(), x.var(), qs[0], qs[1], qs[2], qs[3], qs[4]])
    return np.asarray(feats, dtype=np.float64).reshape(-1)


def flat_features(state: State) -> np.ndarray:
    """All floating tensors flattened and concatenated in natural key order (float32)."""
    return torch.cat([t.detach().to("cpu", torch.float32).reshape(-1) for _, t in _float_tensors(state)]).numpy()


def _as_matrix(features: ArrayLike, name: str = "features") -> np.ndarray:
    X = np.asarray(features)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
    return X


def _as_targets(y: ArrayLike, n: int) -> np.ndarray:
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if t.size != n:
        raise ValueError(f"got {t.size} targets for {n} feature rows")
    if not np.all(np.isfinite(t)) or t.min() < 0.0 or t.max() > 1.0:
        raise ValueError("targets must be finite accuracies in [0, 1]")
    return t


def _check_width(n_features: int | None, X: np.ndarray, model: str) -> None:
    if n_features is None:
        raise RuntimeError(f"{model} is not fitted; call fit() first")
    if X.shape[1] != n_features:
        raise ValueError(
            f"{model} was trained on {n_features} features but got {X.shape[1]}: a different architecture. "
            "This baseline works for one fixed architecture only (no cross-architecture prediction)."
        )


class StatNN:
    """STATNN regressor: ``HistGradientBoostingRegressor`` on ``statnn_features``, predictions clipped to [0, 1].

    Defaults (squared error, lr 0.05, up to 600 trees of 31 leaves, min 20 samples per leaf, L2 1e-3, early
    stopping on an internal 10 % split after 40 rounds without improvement) fit ~5k rows x 56 features in
    ~4 s on one thread. ``n_threads`` caps OpenMP threads during fit/predict (default 1: on data this small
    threads save little, and on a shared CPU OpenMP oversubscription made the fit ~7x slower); ``None``
    leaves the library default. Non-finite features (diverged networks) are passed as missing values (NaN),
    which the trees handle natively. Extra keyword arguments override the regressor's parameters.
    """

    def __init__(
        self,
        learning_rate: float = 0.05,
        max_iter: int = 600,
        max_leaf_nodes: int = 31,
        min_samples_leaf: int = 20,
        l2_regularization: float = 1e-3,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 40,
        seed: int = 0,
        n_threads: int | None = 1,
        **params: object,
    ) -> None:
        self.n_threads = n_threads
        self.params = {
            "loss": "squared_error",
            "learning_rate": learning_rate,
            "max_iter": max_iter,
            "max_leaf_nodes": max_leaf_nodes,
            "min_samples_leaf": min_samples_leaf,
            "l2_regularization": l2_regularization,
            "early_stopping": early_stopping,
            "validation_fraction": validation_fraction,
            "n_iter_no_change": n_iter_no_change,
            "random_state": seed,
        }
        self.params.update(params)
        self.model: HistGradientBoostingRegressor | None = None
        self.n_features: int | None = None

    @staticmethod
    def _clean(X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float64, copy=True)
        X[~np.isfinite(X)] = np.nan
        return X

    def fit(self, features: ArrayLike, y: ArrayLike) -> StatNN:
        """Fit on a (n, d) feature matrix and test accuracies in [0, 1]."""
        X = _as_matrix(features)
        t = _as_targets(y, X.shape[0])
        params = dict(self.params)
        if params.get("early_stopping") and X.shape[0] * params.get("validation_fraction", 0.1) < 10:
            params["early_stopping"] = False  # too few rows for an internal validation split
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            self.model = HistGradientBoostingRegressor(**params).fit(self._clean(X), t)
        self.n_features = X.shape[1]
        return self

    def predict(self, features: ArrayLike) -> np.ndarray:
        """Predicted test accuracy per row, clipped to [0, 1]."""
        X = _as_matrix(features)
        _check_width(self.n_features, X, "StatNN")
        assert self.model is not None
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            return np.clip(self.model.predict(self._clean(X)), 0.0, 1.0)


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.ReLU()]
            d_in = h
        layers.append(nn.Linear(d_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # logits


class FlatMLP:
    """MLP on flattened weights: standardized inputs, ReLU hidden layers, sigmoid output trained with BCE.

    Defaults: hidden (256, 128), Adam lr 1e-3, weight decay 1e-4, batch 256, at most 20 epochs with early
    stopping (patience 4) on the MSE of an internal 10 % validation split; the best epoch's weights are kept
    (~0.75 s per epoch on 5k x 5k features, 2 threads). Set torch's thread count in the caller.
    Deterministic for a given ``seed`` (own RNG state; the global torch RNG is left untouched). Standardized
    inputs are clipped to ±``clip`` and non-finite values set to 0 (the training mean).
    """

    def __init__(
        self,
        hidden: Sequence[int] = (256, 128),
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 20,
        patience: int = 4,
        val_fraction: float = 0.1,
        clip: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.hidden = tuple(hidden)
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.clip = clip
        self.seed = seed
        self.net: _MLP | None = None
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.n_features: int | None = None
        self.best_epoch_: int | None = None

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        assert self.mean_ is not None and self.scale_ is not None
        with np.errstate(all="ignore"):
            Z = (X.astype(np.float32) - self.mean_) / self.scale_
        Z = np.clip(np.nan_to_num(Z, nan=0.0, posinf=self.clip, neginf=-self.clip), -self.clip, self.clip)
        return torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32))

    def fit(self, features: ArrayLike, y: ArrayLike) -> FlatMLP:
        """Fit on a (n, d) feature matrix and test accuracies in [0, 1]."""
        X = _as_matrix(features)
        t = _as_targets(y, X.shape[0])
        n = X.shape[0]
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n)
        n_val = round(n * self.val_fraction) if n >= 20 else 0
        val_idx, tr_idx = perm[:n_val], perm[n_val:]

        Xtr = X[tr_idx].astype(np.float64)
        finite = np.isfinite(Xtr)
        cnt = np.maximum(finite.sum(0), 1)
        mean = np.where(finite, Xtr, 0.0).sum(0) / cnt
        var = np.where(finite, (Xtr - mean) ** 2, 0.0).sum(0) / cnt
        scale = np.sqrt(var)
        self.mean_ = mean.astype(np.float32)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0).astype(np.float32)
        self.n_features = X.shape[1]

        Ztr, ytr = self._standardize(X[tr_idx]), torch.from_numpy(t[tr_idx].astype(np.float32))
        Zva, yva = self._standardize(X[val_idx]), torch.from_numpy(t[val_idx].astype(np.float32))

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _MLP(X.shape[1], self.hidden)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            loss_fn = nn.BCEWithLogitsLoss()
            gen = torch.Generator().manual_seed(self.seed)
            best, best_state, best_epoch, bad = float("inf"), None, 0, 0
            for epoch in range(self.max_epochs):
                net.train()
                order = torch.randperm(len(ytr), generator=gen)
                for i in range(0, len(order), self.batch_size):
                    b = order[i : i + self.batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss_fn(net(Ztr[b]), ytr[b]).backward()
                    opt.step()
                if n_val == 0:
                    continue
                net.eval()
                with torch.no_grad():
                    mse = float(((torch.sigmoid(net(Zva)) - yva) ** 2).mean())
                if mse < best - 1e-7:
                    best, best_epoch, bad = mse, epoch + 1, 0
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
            if best_state is not None:
                net.load_state_dict(best_state)
            self.best_epoch_ = best_epoch if n_val else self.max_epochs
        net.eval()
        self.net = net
        return self

    def predict(self, features: ArrayLike) -> np.ndarray:
        """Predicted test accuracy per row, in [0, 1]."""
        X = _as_matrix(features)
        _check_width(self.n_features, X, "FlatMLP")
        assert self.net is not None
        with torch.no_grad():
            out = torch.sigmoid(self.net(self._standardize(X))).numpy().astype(np.float64)
        return np.clip(out, 0.0, 1.0)


_METHODS = {"statnn": (statnn_features, StatNN), "mlp": (flat_features, FlatMLP)}


def _stack(fn, states: Sequence[State], what: str) -> np.ndarray:
    if len(states) == 0:
        raise ValueError(f"no {what} checkpoints")
    rows = [fn(s) for s in states]
    widths = {r.size for r in rows}
    if len(widths) > 1:
        raise ValueError(f"{what} checkpoints mix architectures (feature lengths {sorted(widths)})")
    return np.stack(rows)


def fit_predict(
    method: str,
    train_states: Sequence[State],
    train_y: ArrayLike,
    test_states: Sequence[State],
    seed: int = 0,
    **params: object,
) -> np.ndarray:
    """Fit baseline ``method`` ("statnn" or "mlp") on training state dicts and predict test accuracies.

    Extra keyword arguments go to the model's constructor. Raises ``ValueError`` for an unknown method or
    when train and test checkpoints are of different architectures (feature lengths differ).
    """
    try:
        feat_fn, cls = _METHODS[method.lower()]
    except KeyError:
        raise ValueError(f"unknown baseline {method!r}; choose from {sorted(_METHODS)}") from None
    Xtr = _stack(feat_fn, train_states, "training")
    Xte = _stack(feat_fn, test_states, "test")
    model = cls(seed=seed, **params).fit(Xtr, train_y)
    return model.predict(Xte)
