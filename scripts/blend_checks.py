"""Does averaging SNE with a statistics GBM out-rank both? Kendall tau of the blends, on the table's splits.

SNE and the pooled-statistics GBM err on different checkpoints, so their average may rank better than either.
This check fits three GBMs on the training zoo's train split (the table's pooled GBM over `pooled.layer_tokens`,
the same regressor over SNE's own per-part statistics pooled the same way, which the service already computes
while it reads a checkpoint, and, as a tree head on the encoder, over those statistics beside SNE's embedding),
picks each blend's weight w on the validation split (p = w * SNE + (1 - w) * GBM, w in 0.1..0.9), and reports
the test split of the training zoo (in-distribution), of the cross-dataset zoo, and every checkpoint of the
held-out zoos (cross-family), plus the split-conformal 90 % interval of each blend (calibrated on the validation
split, like the card's plain interval). One CPU thread, about 2 to 4 min.

    python scripts/blend_checks.py --predictor model/predictors/default
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from held_out_checks import HELD_OUT, every_split

from model.evaluation.baselines import StatNN
from model.evaluation.metrics import conformal_quantile, coverage, interval, kendall_tau, mean_width
from model.evaluation.pooled import pooled_features, sne_pooled_features
from model.predictor import Predictor
from model.training.examples import Example, load_examples, predict_examples

WEIGHTS = tuple(round(0.1 * k, 1) for k in range(1, 10))


def features(pred: Predictor, exs: list[Example]) -> dict[str, np.ndarray]:
    out = predict_examples(pred.model, exs)
    stats = np.stack([sne_pooled_features(e.layers) for e in exs])
    return {
        "sne": out["acc"],
        "pooled": np.stack([pooled_features(e.state) for e in exs]),
        "sne stats": stats,
        "sne stats+emb": np.concatenate([stats, out["emb"].numpy()], axis=1),
        "y": np.array([e.acc for e in exs]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictor", type=Path, required=True)
    ap.add_argument("--train-zoo", type=Path, default=Path("zoos/arch1-digits"))
    ap.add_argument("--cross-dataset-zoo", type=Path, default=Path("zoos/arch1-shapes"))
    ap.add_argument("--zoos", type=Path, default=Path("zoos"), help=f"folder holding {', '.join(HELD_OUT)}")
    ap.add_argument("--max-train", type=int, default=1000, help="as the build script's MAX_TRAIN")
    a = ap.parse_args()
    torch.set_num_threads(1)
    pred = Predictor.load(a.predictor)
    size = pred.config.chunk_size

    def load(zoo: Path, split: str, n: int | None = None) -> dict[str, np.ndarray]:
        return features(pred, load_examples([zoo], split, size, n, 0, "skip"))

    train, val = load(a.train_zoo, "train", a.max_train), load(a.train_zoo, "val")
    keys = ("pooled", "sne stats", "sne stats+emb")
    gbms = {f"GBM[{k}]": (k, StatNN(seed=0).fit(train[k], train["y"])) for k in keys}

    def scores(f: dict[str, np.ndarray], weights: dict[str, float]) -> dict[str, np.ndarray]:
        out = {"SNE": f["sne"]} | {g: m.predict(f[k]) for g, (k, m) in gbms.items()}
        for g in gbms:
            out[f"SNE+{g}"] = weights[g] * out["SNE"] + (1 - weights[g]) * out[g]
        return out

    base = scores(val, {g: 0.5 for g in gbms})
    weights = {g: max(WEIGHTS, key=lambda w: kendall_tau(w * base["SNE"] + (1 - w) * base[g], val["y"])) for g in gbms}
    print("blend weights of SNE chosen on the validation split: " + ", ".join(f"{g} {w}" for g, w in weights.items()))
    val_scores = scores(val, weights)
    q = {m: conformal_quantile(np.abs(val["y"] - s), 0.1) for m, s in val_scores.items()}
    rows: dict[str, dict[str, float]] = {"validation": {m: kendall_tau(s, val["y"]) for m, s in val_scores.items()}}
    test = load(a.train_zoo, "test")
    test_scores = scores(test, weights)
    rows["in-distribution"] = {m: kendall_tau(s, test["y"]) for m, s in test_scores.items()}
    cover = {m: (coverage(test["y"], *interval(s, q[m])), mean_width(*interval(s, q[m]))) for m, s in test_scores.items()}
    cross = load(a.cross_dataset_zoo, "test")
    rows["cross-dataset"] = {m: kendall_tau(s, cross["y"]) for m, s in scores(cross, weights).items()}
    fam: dict[str, list[np.ndarray]] = {"test split": [], "every checkpoint": []}
    per_zoo: dict[str, dict[str, float]] = {}
    for name in HELD_OUT:
        exs, is_test = every_split(a.zoos / name, size)
        f = features(pred, exs)
        s = scores(f, weights)
        per_zoo[name] = {m: kendall_tau(v, f["y"]) for m, v in s.items()}
        fam["test split"].append(np.array([kendall_tau(v[is_test], f["y"][is_test]) for v in s.values()]))
        fam["every checkpoint"].append(np.array(list(per_zoo[name].values())))
    methods = list(test_scores)
    for view, taus in fam.items():
        rows[f"cross-family, {view}"] = dict(zip(methods, np.mean(taus, axis=0).tolist(), strict=True))
    print("| mean tau | " + " | ".join(methods) + " |\n|---|" + "---:|" * len(methods))
    for row, vals in rows.items():
        print(f"| {row} | " + " | ".join(f"{vals[m]:.3f}" for m in methods) + " |")
    print("| 90 % interval in-dist, coverage / width | " + " | ".join(f"{c:.3f} / {w:.3f}" for c, w in cover.values()) + " |")
    for name, vals in per_zoo.items():
        print(f"{name}, every checkpoint: " + "  ".join(f"{m} {v:.3f}" for m, v in vals.items()))


if __name__ == "__main__":
    main()
