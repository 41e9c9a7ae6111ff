"""The pooled-statistics baseline reads any architecture, and the fixed-architecture ones say n/a on a mixture."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.evaluation.baselines import baseline_predictions
from model.evaluation.metrics import kendall_tau
from model.evaluation.pooled import (
    N_POOLED,
    TOKEN_NAMES,
    layer_tokens,
    pool_tokens,
    pooled_features,
    relative_tokens,
    sne_pooled_features,
    sne_stat_tokens,
)
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


def test_relative_tokens_divide_the_shape_out():
    """Init-scale MLPs of widths 8 and 512: raw weight stds differ by log(64)/2 nats, relative ones do not."""
    toks = {}
    for width in (8, 512):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, m.in_features**-0.5)
        toks[width] = layer_tokens(state(net))
    i = {n: k for k, n in enumerate(TOKEN_NAMES)}
    raw = toks[512][0, i["w_log_std"]] - toks[8][0, i["w_log_std"]]
    assert abs(raw + 0.5 * np.log(64)) < 0.1
    rel = {w: relative_tokens(t) for w, t in toks.items()}
    assert abs(rel[512][0, i["w_log_std"]] - rel[8][0, i["w_log_std"]]) < 0.1
    assert np.all(rel[512][:, [i["log_fan_in"], i["log_fan_out"]]] == 0)
    assert 0 < rel[512][0, i["w_stable_rank"]] <= 1  # a share of full rank
    s = state(net)
    assert np.array_equal(pooled_features(s), pool_tokens(layer_tokens(s)), equal_nan=True)


def test_sne_stat_tokens_are_each_layers_weight_and_bias_statistics():
    """The `pooled_sne` baseline reads exactly the statistics SNE reads: weight then bias, zeros without a bias,
    then the layer's pair statistics."""
    from model.checkpoint import load_checkpoint
    from model.chunking import chunk_checkpoint
    from model.pairs import N_PAIR
    from model.stats import N_STATS
    from tests.nets import checkpoint_bytes

    layers = chunk_checkpoint(load_checkpoint(checkpoint_bytes("resnet", seed=0)), 16)
    tok = sne_stat_tokens(layers)
    width = 2 * N_STATS + N_PAIR
    assert tok.shape == (len(layers), width)
    for row, layer in zip(tok, layers, strict=True):
        assert np.allclose(row[:N_STATS], layer.parts[0][1].stats.double().numpy())
        if len(layer.parts) > 1:
            assert np.allclose(row[N_STATS : 2 * N_STATS], layer.parts[1][1].stats.double().numpy())
        else:
            assert not row[N_STATS : 2 * N_STATS].any()
        assert np.array_equal(row[2 * N_STATS :], layer.pair.double().numpy())
    assert tok[:, -1].any()  # the resnet's convs connect: some layers carry a pair
    assert np.array_equal(sne_pooled_features(layers), pool_tokens(tok)) and pool_tokens(tok).shape == (4 * width + 1,)


def test_pair_features_pool_the_connected_pairs_only():
    from dataclasses import replace

    import torch

    from model.checkpoint import load_checkpoint
    from model.chunking import chunk_checkpoint
    from model.evaluation.pooled import pair_features
    from tests.nets import checkpoint_bytes

    layers = chunk_checkpoint(load_checkpoint(checkpoint_bytes("mlp", seed=0)), 16)
    feats = pair_features(layers)
    pairs = [la.pair for la in layers if la.pair[-1] == 1.0]
    assert feats.shape == (11,) and feats[-1] == len(pairs) >= 1
    assert np.allclose(feats[:2], pairs[0][:2].double().numpy()) and np.allclose(feats[2:4], pairs[-1][:2].double().numpy())
    none = [replace(la, pair=torch.zeros(3)) for la in layers]
    assert np.isnan(pair_features(none)[:-1]).all() and pair_features(none)[-1] == 0
