"""Two checks behind the predictor-quality notes (docs/predictor-history.md), on one zoo's splits (1 CPU thread, ~1-2 min):

1. How much the conv-kernel statistics add: a GBM (the pooled baseline's regressor) over SNE's per-part
   statistics, flattened (one architecture), with and without the two `kernel_corr_*` columns.
2. What the ensemble adds: test Kendall tau of each member of a predictor and of the ensemble.

    python scripts/issue9_checks.py --zoo zoos/arch1-digits --predictor model/predictors/default
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from model.evaluation.baselines import StatNN
from model.evaluation.metrics import kendall_tau
from model.predictor import Predictor
from model.sne import SNEEnsemble
from model.stats import STAT_NAMES
from model.training.examples import Example, load_examples, predict_examples


def flat_stats(e: Example, cols: list[int]) -> np.ndarray:
    return np.concatenate([ch.stats.numpy()[cols] for layer in e.layers for _, ch in layer.parts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--predictor", type=Path, default=None, help="default: the shipped one")
    ap.add_argument("--max-train", type=int, default=1000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    pred = Predictor.load(a.predictor)
    size = pred.config.chunk_size
    train = load_examples([a.zoo], "train", size, a.max_train, 0, "skip")
    test = load_examples([a.zoo], "test", size, None, 0, "skip")
    y = np.array([e.acc for e in test])
    every = list(range(len(STAT_NAMES)))
    no_kernel = [i for i, n in enumerate(STAT_NAMES) if not n.startswith("kernel_corr")]
    print(f"zoo {a.zoo}: {len(train)} train / {len(test)} test checkpoints")
    for label, cols in (("all statistics", every), ("without kernel_corr_*", no_kernel)):
        gbm = StatNN(seed=0).fit(np.stack([flat_stats(e, cols) for e in train]), [e.acc for e in train])
        tau = kendall_tau(gbm.predict(np.stack([flat_stats(e, cols) for e in test])), y)
        print(f"GBM over SNE statistics, {label}: test tau {tau:.4f}")
    members = pred.model.sne_members() if isinstance(pred.model, SNEEnsemble) else [pred.model]
    for k, m in enumerate(members):
        print(f"member {k}: test tau {kendall_tau(predict_examples(m, test)['acc'], y):.4f}")
    print(f"{pred.name} ({len(members)} members): test tau {kendall_tau(predict_examples(pred.model, test)['acc'], y):.4f}")


if __name__ == "__main__":
    main()
