"""What the pair statistics (`model.pairs`) add to the statistics GBMs, on the table's splits.

Fits the pooled-statistics GBM with and without the pooled pair features (`pooled.pair_features`), and the GBM
over SNE's own statistics (`pooled.sne_stat_tokens`) with and without their pair columns, on the training zoo's
train split, each with early-stopping seeds 0..N-1; reports the mean Kendall tau (and the range over seeds) on
the training zoo's test split (in-distribution), the cross-dataset zoo's test split and every checkpoint of
each held-out zoo (cross-family). No SNE is involved: this measures the signal, not the encoder. Two more
rows try a lead no encoder reads yet, the geometry of each weight's output units (`unit_geometry`: their mean
pairwise cosine and its spread, the spread of their norms and of the input columns' norms, the share of the
energy in their mean direction), pooled like the layer tokens. One CPU thread, about 4 min (mostly reading the
zoos).

    python scripts/pair_checks.py --seeds 5
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from held_out_checks import HELD_OUT, every_split

from model.checkpoint import checkpoint_from_tensors
from model.evaluation.baselines import StatNN
from model.evaluation.metrics import kendall_tau
from model.evaluation.pooled import layer_tokens, pair_features, pool_tokens, sne_stat_tokens
from model.pairs import N_PAIR
from model.training.examples import Example, load_examples


def unit_geometry(w: torch.Tensor) -> list[float]:
    """Five numbers on how a weight's output units (rows of `W.reshape(out, -1)`) sit among each other; all are
    invariant to permuting the units or the inputs."""
    a = w.double().reshape(w.shape[0], -1)
    n = a.shape[0]
    norms = a.norm(dim=1).clamp_min(1e-30)
    cos = (a / norms[:, None]) @ (a / norms[:, None]).T  # [n, n]
    off = cos[~torch.eye(n, dtype=torch.bool)]
    cols = a.norm(dim=0)
    share = n * float(a.mean(0) @ a.mean(0)) / max(float((a * a).sum()), 1e-30)
    return [float(off.mean()) if n > 1 else 0.0, float(off.std()) if n > 2 else 0.0,
            float(norms.std() / norms.mean()), float(cols.std() / cols.mean().clamp_min(1e-30)), share]


def geometry_features(e: Example) -> np.ndarray:
    """`unit_geometry` of every matrix weight in depth order, pooled as the first, the last, and the mean, max and
    min over the weights between them."""
    layers = checkpoint_from_tensors(e.state).layers
    g = np.asarray([unit_geometry(la.weight) for la in layers if la.weight is not None and la.weight.dim() >= 2])
    mid = g[1:-1] if len(g) > 2 else np.full((1, g.shape[1]), np.nan)
    return np.concatenate([g[0], g[-1], np.nanmean(mid, 0), np.nanmax(mid, 0), np.nanmin(mid, 0)])


Features = Callable[[Example], np.ndarray]
METHODS: dict[str, Features] = {
    "pooled GBM": lambda e: pool_tokens(layer_tokens(e.state)),
    "pooled GBM + pairs": lambda e: np.concatenate([pool_tokens(layer_tokens(e.state)), pair_features(e.layers)]),
    "SNE-stats GBM, no pairs": lambda e: pool_tokens(sne_stat_tokens(e.layers)[:, :-N_PAIR]),
    "SNE-stats GBM": lambda e: pool_tokens(sne_stat_tokens(e.layers)),
    "pooled GBM + unit geometry": lambda e: np.concatenate([pool_tokens(layer_tokens(e.state)), geometry_features(e)]),
    "SNE-stats GBM + unit geometry": lambda e: np.concatenate([pool_tokens(sne_stat_tokens(e.layers)), geometry_features(e)]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-zoo", type=Path, default=Path("zoos/arch1-digits"))
    ap.add_argument("--cross-dataset-zoo", type=Path, default=Path("zoos/arch1-shapes"))
    ap.add_argument("--zoos", type=Path, default=Path("zoos"), help=f"folder holding {', '.join(HELD_OUT)}")
    ap.add_argument("--max-train", type=int, default=1000, help="as the build script's MAX_TRAIN")
    ap.add_argument("--seeds", type=int, default=5, help="early-stopping seeds of each GBM")
    ap.add_argument("--chunk-size", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(1)
    c = a.chunk_size
    train = load_examples([a.train_zoo], "train", c, a.max_train, 0, "skip")
    evals = {"in-distribution": load_examples([a.train_zoo], "test", c, None, 0, "skip"),
             "cross-dataset": load_examples([a.cross_dataset_zoo], "test", c, None, 0, "skip")}
    evals |= {z: every_split(a.zoos / z, c)[0] for z in HELD_OUT}
    y = {k: np.array([e.acc for e in exs]) for k, exs in evals.items()}
    cols = [*evals, "cross-family (mean of 5)"]
    print("| mean tau (min-max over seeds) | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for name, fx in METHODS.items():
        X = {k: np.stack([fx(e) for e in exs]) for k, exs in evals.items()}
        taus: dict[str, list[float]] = {k: [] for k in evals}
        for seed in range(a.seeds):
            m = StatNN(seed=seed).fit(np.stack([fx(e) for e in train]), [e.acc for e in train])
            for k in evals:
                taus[k].append(kendall_tau(m.predict(X[k]), y[k]))
        fam = np.mean([np.mean(taus[z]) for z in HELD_OUT])
        cells = [f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in taus.values()] + [f"{fam:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
