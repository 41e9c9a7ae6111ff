"""Do predictors trained with different recipes rank better together? Kendall tau of their averaged logits.

Members of one recipe err alike; two recipes (say the shipped one and `--stats-encoding ple --weight-decay 0.1
--train-chunks 16`) may err on different checkpoints, so an ensemble across them may out-rank each. For every
non-empty subset of the predictors given, this averages their accuracy logits (as `model.sne.SNEEnsemble`
averages its members') and reports the validation and test splits of the training zoo, the test split of the
cross-dataset zoo and the held-out zoos (cross-family: the mean over them, on their test splits and on every
checkpoint). One CPU thread, about 1 to 2 min per predictor.

    python scripts/ensemble_checks.py --predictor model/predictors/default --predictor runs/combo
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from held_out_checks import HELD_OUT, every_split, load_predictors

from model.evaluation.metrics import kendall_tau
from model.predictor import Predictor
from model.training.examples import Example, load_examples, predict_examples


def logits(pred: Predictor, exs: list[Example]) -> np.ndarray:
    """The accuracy logit (what an ensemble averages), recovered from the predicted accuracy."""
    p = np.clip(predict_examples(pred.model, exs)["acc"].astype(np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictor", type=Path, action="append", required=True, help="repeatable")
    ap.add_argument("--train-zoo", type=Path, default=Path("zoos/arch1-digits"))
    ap.add_argument("--cross-dataset-zoo", type=Path, default=Path("zoos/arch1-shapes"))
    ap.add_argument("--zoos", type=Path, default=Path("zoos"), help=f"folder holding {', '.join(HELD_OUT)}")
    a = ap.parse_args()
    torch.set_num_threads(1)
    preds, size = load_predictors(a.predictor)
    splits: dict[str, tuple[list[Example], np.ndarray]] = {}
    for key, zoo, split in (("val", a.train_zoo, "val"), ("test", a.train_zoo, "test"), ("cross", a.cross_dataset_zoo, "test")):
        exs = load_examples([zoo], split, size, None, 0, "skip")
        splits[key] = (exs, np.ones(len(exs), dtype=bool))
    for name in HELD_OUT:
        splits[name] = every_split(a.zoos / name, size)
    ys = {k: np.array([e.acc for e in exs]) for k, (exs, _) in splits.items()}
    out = {p: {k: logits(m, exs) for k, (exs, _) in splits.items()} for p, m in preds.items()}

    def row(group: tuple[str, ...]) -> list[float]:
        avg = {k: np.mean([out[p][k] for p in group], axis=0) for k in splits}
        tau = {k: kendall_tau(avg[k], ys[k]) for k in ("val", "test", "cross")}
        test_split = [kendall_tau(avg[n][splits[n][1]], ys[n][splits[n][1]]) for n in HELD_OUT]
        every = [kendall_tau(avg[n], ys[n]) for n in HELD_OUT]
        return [tau["val"], tau["test"], tau["cross"], float(np.mean(test_split)), float(np.mean(every))]

    print("| predictors (logits averaged) | validation | in-distribution | cross-dataset | cross-family, test splits "
          "| cross-family, every checkpoint |\n|---|---:|---:|---:|---:|---:|")
    for r in range(1, len(preds) + 1):
        for group in itertools.combinations(preds, r):
            print(f"| {' + '.join(group)} | " + " | ".join(f"{v:.3f}" for v in row(group)) + " |", flush=True)


if __name__ == "__main__":
    main()
