"""How the served 90 % interval's coverage depends on what it was calibrated on (README, "Calibration zoo").

For one predictor, the normalised interval `pred ± q * sigma(x)` (sigma as served, from the card's reference)
with `q` taken three ways: on the val split alone (what `sne train` writes), on a calibration zoo alone, and on
both (what `sne calibrate` writes). Each is scored on the training zoo's test split and, for the val-only `q`,
on every checkpoint of the calibration zoo: fresh runs of the same sampler that neither training nor that
`q` saw, 3x the test split's runs. With `--fresh-zoo`, every `q` is also scored on every checkpoint of a third
zoo of the same sampler (another seed) that neither training nor any `q` saw: the served interval's
in-distribution coverage on fresh runs, where the test split has only 90. Coverage with a 95 % interval by
run. One CPU thread, about 1 min (2 with a fresh zoo).

    python scripts/calibration_checks.py --predictor model/predictors/default \\
        --zoo zoos/arch1-digits --cal-zoo zoos/arch1-digits-cal [--fresh-zoo zoos/arch1-digits-fresh]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from model.evaluation.metrics import bootstrap_means, conformal_quantile
from model.labels import read_labels
from model.predictor import DEFAULT_LEVEL, Predictor
from model.training.examples import load_split, predict_examples

ALPHA = 1.0 - float(DEFAULT_LEVEL)


def served_q(pred: Predictor) -> float:
    """The scale of the served (normalised) interval, as the card holds it."""
    return float((pred.card.conformal.model_extra or {})["normalized"]["accuracy"][DEFAULT_LEVEL])


def scored(pred: Predictor, zoos: list[Path], splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Predictions, truth, served sigma(x) and run of every checkpoint of `splits`."""
    ex = [e for s in splits for e in load_split(zoos, s, pred.config.chunk_size).examples]
    out = predict_examples(pred.model, ex)
    half = pred.normalized_half_widths(out["emb"])
    if half is None:
        raise SystemExit("the predictor's card has no normalised interval")
    q = served_q(pred)
    runs = {lab.path.resolve(): f"{z}:{lab.run}" for z in zoos for lab in read_labels(z)}
    return {"pred": out["acc"], "true": np.array([e.acc for e in ex]), "sigma": half / q,
            "run": np.array([runs.get(Path(e.path).resolve(), e.path) for e in ex])}


def line(name: str, q: float, d: dict[str, np.ndarray]) -> str:
    half = q * d["sigma"]
    hit = (np.abs(d["true"] - d["pred"]) <= half).astype(float)
    lo, hi = np.clip(d["pred"] - half, 0, 1), np.clip(d["pred"] + half, 0, 1)
    reps = bootstrap_means(hit, d["run"].tolist(), 1000)
    return (f"| {name} | {q:.3f} | {len(hit)} ({len(set(d['run']))}) | {hit.mean():.3f} "
            f"[{np.quantile(reps, 0.025):.2f}, {np.quantile(reps, 0.975):.2f}] | {np.mean(hi - lo):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", type=Path, required=True)
    ap.add_argument("--zoo", type=Path, required=True, help="the zoo it was trained on (val and test splits)")
    ap.add_argument("--cal-zoo", type=Path, required=True, help="a zoo of the same sampler it never saw")
    ap.add_argument("--fresh-zoo", type=Path, help="another zoo of that sampler, seen by neither training nor q")
    a = ap.parse_args()
    torch.set_num_threads(1)
    pred = Predictor.load(a.predictor)
    val, test = scored(pred, [a.zoo], ("val",)), scored(pred, [a.zoo], ("test",))
    cal = scored(pred, [a.cal_zoo], ("train", "val", "test"))
    score = {k: np.abs(d["true"] - d["pred"]) / d["sigma"] for k, d in (("val", val), ("cal", cal))}
    qs = {"val": conformal_quantile(score["val"], ALPHA), "cal zoo": conformal_quantile(score["cal"], ALPHA),
          "val + cal zoo": conformal_quantile(np.concatenate([score["val"], score["cal"]]), ALPHA)}
    print(f"{pred.name} {pred.version}: served 90 % interval, q calibrated on ...\n")
    print("| q from → scored on | q | n (runs) | coverage [95 % CI by run] | mean width |\n|---|---:|---:|---:|---:|")
    for name, q in qs.items():
        print(line(f"{name} → test split", q, test))
    print(line("val → every checkpoint of the calibration zoo", qs["val"], cal))
    if a.fresh_zoo is not None:
        fresh = scored(pred, [a.fresh_zoo], ("train", "val", "test"))
        for name, q in qs.items():
            print(line(f"{name} → every checkpoint of the fresh zoo", q, fresh))
        print(line("the card's own q (served) → every checkpoint of the fresh zoo", served_q(pred), fresh))


if __name__ == "__main__":
    main()
