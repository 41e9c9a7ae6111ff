"""How much do the GBM baselines' own Kendall tau move with their seed? The spread the +0.02 target sits in.

The pooled-statistics GBM and the SNE-stats GBM (`model.evaluation.table`) stop early on an internal random
10 % of their training rows, drawn from the regressor's seed (`StatNN(seed=...)`); `sne eval` fits them once,
with its `--seed`. This check fits each on the training zoo's train split with seeds 0..N-1 and prints the test
split's tau per seed and its mean, min and max, beside the given predictors' (which do not depend on it).
One CPU thread, about 2 min for ten seeds.

    python scripts/baseline_spread.py --predictor model/predictors/default --seeds 10
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from model.evaluation.baselines import StatNN
from model.evaluation.metrics import kendall_tau
from model.evaluation.pooled import pooled_features, sne_pooled_features
from model.predictor import Predictor
from model.training.examples import load_examples, predict_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictor", type=Path, action="append", required=True, help="repeatable")
    ap.add_argument("--train-zoo", type=Path, default=Path("zoos/arch1-digits"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--max-train", type=int, default=1000, help="as the build script's MAX_TRAIN")
    a = ap.parse_args()
    torch.set_num_threads(1)
    preds = {str(p): Predictor.load(p) for p in a.predictor}
    size = next(iter(preds.values())).config.chunk_size
    train = load_examples([a.train_zoo], "train", size, a.max_train, 0, "skip")
    test = load_examples([a.train_zoo], "test", size, None, 0, "skip")
    y_train, y_test = np.array([e.acc for e in train]), np.array([e.acc for e in test])
    views = {
        "pooled-stats GBM": (pooled_features, "state"),
        "SNE-stats GBM": (sne_pooled_features, "layers"),
    }
    for name, (fn, field) in views.items():
        x_train = np.stack([fn(getattr(e, field)) for e in train])
        x_test = np.stack([fn(getattr(e, field)) for e in test])
        taus = [kendall_tau(StatNN(seed=s).fit(x_train, y_train).predict(x_test), y_test) for s in range(a.seeds)]
        print(f"{name}: " + " ".join(f"{t:.3f}" for t in taus), flush=True)
        print(f"{name}, {a.seeds} seeds: mean {np.mean(taus):.3f}  min {min(taus):.3f}  max {max(taus):.3f}")
    for p, pred in preds.items():
        print(f"{p}: {kendall_tau(predict_examples(pred.model, test)['acc'], y_test):.3f}")


if __name__ == "__main__":
    main()
