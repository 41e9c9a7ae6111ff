"""Cross-family Kendall tau on EVERY checkpoint of the held-out zoos, not only their 15 % test splits.

A zoo the predictor never trained on is held out as a whole, so all its checkpoints are fair test data. The
`sne eval` table scores only the test splits (28 checkpoints from 6 runs for each Arch2 zoo: 95 % intervals
0.7 wide), which makes the cross-family mean noisy; this check scores the same zoos on all their checkpoints
(2,363 instead of 357), for each predictor given and for the pooled-statistics GBM fit on the training zoo's
train split exactly as in the table, and the same GBM on shape-free layer tokens
(`model.evaluation.pooled.relative_tokens`). One CPU thread: about 4 min for five predictors (mostly reading
the zoos).

    python scripts/held_out_checks.py --predictor model/predictors/default --predictor runs/digits
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from model.evaluation.baselines import StatNN
from model.evaluation.metrics import kendall_tau
from model.evaluation.pooled import layer_tokens, pool_tokens, relative_tokens
from model.predictor import Predictor
from model.training.examples import Example, load_examples, predict_examples

HELD_OUT = ("arch2-digits", "arch2-shapes", "mlp-digits", "resnet-digits", "transformer-sequences")


def every_split(zoo: Path, chunk_size: int) -> tuple[list[Example], np.ndarray]:
    """All of a zoo's checkpoints, and which of them are its test split."""
    splits = {s: load_examples([zoo], s, chunk_size, None, 0, "skip") for s in ("train", "val", "test")}
    return [e for exs in splits.values() for e in exs], np.array([s == "test" for s, exs in splits.items() for _ in exs])


def load_predictors(paths: list[Path]) -> tuple[dict[str, Predictor], int]:
    """The predictors by path, and the chunk size they share (they are scored on the same examples)."""
    preds = {str(p): Predictor.load(p) for p in paths}
    size = next(iter(preds.values())).config.chunk_size
    if any(p.config.chunk_size != size for p in preds.values()):
        raise SystemExit("the predictors must share a chunk size (they are scored on the same examples)")
    return preds, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictor", type=Path, action="append", required=True, help="repeatable")
    ap.add_argument("--train-zoo", type=Path, default=Path("zoos/arch1-digits"), help="what the predictors learned from")
    ap.add_argument("--zoos", type=Path, default=Path("zoos"), help=f"folder holding {', '.join(HELD_OUT)}")
    ap.add_argument("--max-train", type=int, default=1000, help="as the build script's MAX_TRAIN")
    a = ap.parse_args()
    torch.set_num_threads(1)
    preds, size = load_predictors(a.predictor)
    train = load_examples([a.train_zoo], "train", size, a.max_train, 0, "skip")
    tokens = [layer_tokens(e.state) for e in train]
    gbms = {  # the table's baseline, and the same on shape-free tokens (as `sne train --stats-view relative`)
        "pooled GBM": StatNN(seed=0).fit(np.stack([pool_tokens(t) for t in tokens]), [e.acc for e in train]),
        "pooled GBM, relative": StatNN(seed=0).fit(
            np.stack([pool_tokens(relative_tokens(t)) for t in tokens]), [e.acc for e in train]
        ),
    }
    taus: dict[str, dict[str, dict[str, float]]] = {"test split": {}, "every checkpoint": {}}
    for name in HELD_OUT:
        exs, is_test = every_split(a.zoos / name, size)
        scores = {p: predict_examples(m.model, exs)["acc"] for p, m in preds.items()}
        held_tokens = [layer_tokens(e.state) for e in exs]
        scores["pooled GBM"] = gbms["pooled GBM"].predict(np.stack([pool_tokens(t) for t in held_tokens]))
        scores["pooled GBM, relative"] = gbms["pooled GBM, relative"].predict(
            np.stack([pool_tokens(relative_tokens(t)) for t in held_tokens])
        )
        y = np.array([e.acc for e in exs])
        for view, sel in (("test split", is_test), ("every checkpoint", np.ones_like(is_test))):
            taus[view][name] = {m: kendall_tau(s[sel], y[sel]) for m, s in scores.items()}
        print(f"{name}: {int(is_test.sum())} test / {len(exs)} checkpoints  " + "  ".join(
            f"{m} {taus['test split'][name][m]:.3f} / {taus['every checkpoint'][name][m]:.3f}" for m in scores), flush=True)
    for view, rows in taus.items():
        means = {m: float(np.mean([r[m] for r in rows.values()])) for m in next(iter(rows.values()))}
        print(f"mean over the {len(rows)} held-out zoos, {view}: " + "  ".join(f"{m} {v:.3f}" for m, v in means.items()))


if __name__ == "__main__":
    main()
