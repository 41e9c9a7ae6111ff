"""The architecture-agnostic statistics baseline: per-layer statistics tokens, pooled to one fixed-length vector.

Each linear/conv/norm layer becomes a token of statistics of its weight and bias (log-std, mean/std,
standardised quantiles, kurtosis, log spectral norm and stable rank of the weight) plus its type, log fan-in,
log fan-out and relative depth. The network is the first layer's token, the last layer's, the mean and the max
over the layers between them, and the layer count: the same length for any architecture, so one
gradient-boosted model (``baselines.StatNN``'s regressor) ranks MLPs, CNNs and mixtures of widths alike.
SNE earns its place only by beating this (issue 9).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from model.checkpoint import LayerKind, checkpoint_from_tensors
from model.chunking import ChunkedLayer
from model.pairs import PAIR_NAMES
from model.stats import N_STATS

__all__ = [
    "N_POOLED", "TOKEN_NAMES", "layer_tokens", "pair_features", "pool_tokens", "pooled_features", "relative_tokens",
    "sne_pooled_features", "sne_stat_tokens",
]

_Q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
_PART = ("log_std", "mean_over_std", "q05", "q25", "q50", "q75", "q95", "kurtosis")
TOKEN_NAMES: tuple[str, ...] = (
    *(f"w_{s}" for s in _PART), "w_log_spectral", "w_stable_rank", *(f"b_{s}" for s in _PART),
    "kind", "log_fan_in", "log_fan_out", "rel_depth",
)
N_POOLED = 4 * len(TOKEN_NAMES) + 1
_KINDS = {k: i for i, k in enumerate(LayerKind)}
_MAX_SAMPLE = 65_536  # quantiles of larger tensors from an evenly spaced subsample


def _part_stats(t: torch.Tensor | None) -> list[float]:
    if t is None or t.numel() < 2:
        return [float("nan")] * len(_PART)
    x = t.detach().reshape(-1).to(torch.float64)
    std = x.std()
    if not torch.isfinite(std) or std == 0:
        return [float("nan")] * len(_PART)
    z = (x - x.mean()) / std
    zs = z[:: max(1, z.numel() // _MAX_SAMPLE)]
    return [float(std.log()), float(x.mean() / std), *torch.quantile(zs, _Q).tolist(), float((z**4).mean())]


def _spectral(w: torch.Tensor | None) -> list[float]:
    if w is None or w.dim() < 2:
        return [float("nan"), float("nan")]
    m = w.detach().reshape(w.shape[0], -1).to(torch.float32)  # [out, in * kernel]
    if min(m.shape) > 512:
        m = m[:512, :512]  # a bounded block: the baseline must stay cheap on large layers
    s = torch.linalg.svdvals(m)  # [min(out, in)]
    top = float(s[0])
    if not np.isfinite(top) or top <= 0:
        return [float("nan"), float("nan")]
    return [float(np.log(top)), float((s**2).sum() / top**2)]


def layer_tokens(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """One statistics token per layer, in the checkpoint's layer order: ``[n_layers, len(TOKEN_NAMES)]``."""
    layers = [layer for layer in checkpoint_from_tensors(dict(state)).layers if layer.weight is not None]
    if not layers:
        raise ValueError("checkpoint has no weight layers")
    rows = []
    for i, layer in enumerate(layers):
        w = layer.weight
        assert w is not None
        fan_out, fan_in = (w.shape[0], w[0].numel()) if w.dim() >= 2 else (w.numel(), 1)
        rows.append([
            *_part_stats(w), *_spectral(w), *_part_stats(layer.bias), float(_KINDS[layer.kind]),
            float(np.log(fan_in)), float(np.log(fan_out)), i / max(1, len(layers) - 1),
        ])
    return np.asarray(rows, dtype=np.float64)


def relative_tokens(tok: np.ndarray) -> np.ndarray:
    """Layer tokens with the layer's shape divided out, as `model.stats.relative_view` does for SNE: the weight's
    std in units of 1/sqrt(fan_in), its spectral norm in units of a random matrix's of that std and shape, the
    stable rank as a share of full rank, fan-in and fan-out left out (set to 0)."""
    out = tok.copy()
    i = {n: k for k, n in enumerate(TOKEN_NAMES)}
    fan_in, fan_out = tok[:, i["log_fan_in"]], tok[:, i["log_fan_out"]]
    out[:, i["w_log_std"]] = tok[:, i["w_log_std"]] + 0.5 * fan_in
    out[:, i["w_log_spectral"]] = tok[:, i["w_log_spectral"]] - tok[:, i["w_log_std"]] - np.logaddexp(0.5 * fan_in, 0.5 * fan_out)
    rank = np.minimum(np.minimum(fan_in, fan_out), np.log(512))  # `_spectral` reads at most a 512 x 512 block
    out[:, i["w_stable_rank"]] = tok[:, i["w_stable_rank"]] / np.exp(rank)
    out[:, [i["log_fan_in"], i["log_fan_out"]]] = 0.0
    return out


def pooled_features(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """First token, last token, mean and max over the middle tokens (NaN when there are none), layer count."""
    return pool_tokens(layer_tokens(state))


def pool_tokens(tok: np.ndarray) -> np.ndarray:
    """`pooled_features` of precomputed layer tokens `[n_layers, len(TOKEN_NAMES)]` (raw or `relative_tokens`)."""
    middle = tok[1:-1]
    with warnings.catch_warnings():  # all-NaN columns (no bias anywhere) stay NaN: missing for the trees
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(middle, 0) if len(middle) else np.full(tok.shape[1], np.nan)
        mx = np.nanmax(middle, 0) if len(middle) else np.full(tok.shape[1], np.nan)
    return np.concatenate([tok[0], tok[-1], mean, mx, [float(len(tok))]])


def sne_stat_tokens(layers: Sequence[ChunkedLayer]) -> np.ndarray:
    """`[n_layers, 2 * N_STATS + N_PAIR]`: SNE's own statistics of each layer's first two parts (weight, bias;
    zeros if absent) and the layer's pair statistics (`model.pairs`), the numbers the encoder reads. Pooled by
    `pool_tokens`, they make the strongest in-distribution baseline found so far (the table's ``pooled_sne``):
    a GBM over exactly what SNE sees."""
    rows = []
    for layer in layers:
        parts = [ch.stats.double().numpy() for _, ch in layer.parts][:2]
        rows.append(np.concatenate(parts + [np.zeros(N_STATS)] * (2 - len(parts)) + [layer.pair.double().numpy()]))
    return np.stack(rows)


_PAIR_COLS = [PAIR_NAMES.index("pair_gram_align"), PAIR_NAMES.index("pair_log_gain")]
_PRESENT = PAIR_NAMES.index("pair_present")


def pair_features(layers: Sequence[ChunkedLayer]) -> np.ndarray:
    """`[5 * 2 + 1]` the connected pairs' alignment and gain (`model.pairs`) pooled as the first pair, the last,
    their mean, max and min, and the number of pairs (NaN, missing for the trees, where there is none): what
    the pooled-statistics GBM gains from the pairs, for `scripts/pair_checks.py`."""
    rows = np.stack([layer.pair.double().numpy() for layer in layers])
    rows = rows[rows[:, _PRESENT] == 1.0][:, _PAIR_COLS]
    if not len(rows):
        return np.concatenate([np.full(5 * len(_PAIR_COLS), np.nan), [0.0]])
    return np.concatenate([rows[0], rows[-1], rows.mean(0), rows.max(0), rows.min(0), [float(len(rows))]])


def sne_pooled_features(layers: Sequence[ChunkedLayer]) -> np.ndarray:
    """`pooled_features` over SNE's own statistics (`sne_stat_tokens`): the ``pooled_sne`` baseline's input."""
    return pool_tokens(sne_stat_tokens(layers))
