"""The card's `conformal` section: split-conformal quantiles of a trained SNE's residuals, on the val split and
on any further held-out checkpoints (`sne calibrate`).

Why more than val: the val split is what early stopping already looked at, and it holds a few dozen runs.
Checkpoints of one run share their hyperparameters and errors, so a quantile taken over ~90 runs moves by
several points of coverage from one draw of runs to the next (the README's "Calibration zoo" measures it).
A second zoo drawn from the same sampler with another seed (`sne zoo --seed 1`), none of it trained on, adds
its every split to the calibration set; the served interval is then calibrated on both. The OOD threshold
and the reference embeddings are left as they are: they describe the training split.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.evaluation.metrics import conformal_quantiles, normalized_conformal
from model.labels import read_labels
from model.predictor import Predictor, weights_digest
from model.training.examples import Example, ExamplePredictions, OnBad, load_split, predict_examples
from model.training.guards import TrainError, calibratable
from model.zoo.families import family_of


def conformal_section(
    out: ExamplePredictions, cal_set: Sequence[Example], reference: torch.Tensor, ref_residuals: np.ndarray,
    has_gap: bool, where: str = "the val split",
) -> dict[str, Any]:
    """Quantiles of |residual| (constant interval) and of |residual| / sigma(x) (normalised, the served one) of
    the predictions `out` for `cal_set`, at every level its size allows; `where` names the set in the card."""
    true_acc = np.array([e.acc for e in cal_set])
    true_gap = np.array([e.gap or 0.0 for e in cal_set])
    levels = calibratable(len(cal_set))
    return {
        "method": f"split conformal, absolute residuals on {where}",
        "n_calibration": len(cal_set),
        "accuracy": conformal_quantiles(np.abs(out["acc"] - true_acc), levels),
        "gap": conformal_quantiles(np.abs(out["gap"] - true_gap), levels) if has_gap else {},
        "normalized": normalized_conformal(  # sharper intervals at the same coverage (issue 9)
            reference.half().float().numpy(), ref_residuals,  # fp16: as saved and served
            out["emb"].numpy(), out["acc"] - true_acc, levels,
        ),
    }


def calibration_set(
    predictor: Predictor, sources: Sequence[Path], on_bad: OnBad = "fail"
) -> tuple[list[Example], dict[str, int]]:
    """The predictor's own val split plus every split of `sources`, and how many came from where.

    Refuses a source the predictor was trained from, any checkpoint of its training sources, and families or
    datasets it was not trained on: the interval is meant for checkpoints like its training zoo's, and a
    checkpoint it learned from would make the interval too narrow."""
    card, chunk = predictor.card, predictor.config.chunk_size
    trained_from = [Path(d) for d in card.zoo.dirs]
    if not trained_from:
        raise TrainError("the predictor's card names no training sources (card.zoo.dirs): nothing to take val from")
    for d in trained_from:
        if not d.exists():
            raise TrainError(f"the predictor's training source {d} is not here: its val split is part of the "
                             "calibration set, so calibrate where that zoo or labels file is")
    opts = (card.model_extra or {}).get("training") or {}
    own_sources = {d.resolve() for d in trained_from}
    own = {lab.path.resolve() for d in trained_from for lab in read_labels(d)}
    for s in sources:
        if Path(s).resolve() in own_sources:
            raise TrainError(f"{s} is a training source of this predictor: give a zoo or labels it never saw")
        shared = [lab.path for lab in read_labels(Path(s)) if lab.path.resolve() in own]
        if shared:
            raise TrainError(f"{s}: {len(shared)} checkpoint(s) belong to the predictor's training sources, e.g. {shared[0]}")
    val = load_split(trained_from, "val", chunk, opts.get("max_eval"), int(opts.get("seed", 0)), on_bad).examples
    per_source = {str(s): [e for split in ("train", "val", "test") for e in load_split([s], split, chunk, None, 0, on_bad).examples]
                  for s in sources}
    extra = [e for examples in per_source.values() for e in examples]
    families, datasets = {family_of(a) for a in card.zoo.archs}, set(card.zoo.datasets)
    foreign = sorted({f"{family_of(e.arch)}/{e.dataset}" for e in extra
                      if family_of(e.arch) not in families or e.dataset not in datasets})
    if foreign:
        raise TrainError(f"calibration checkpoints of {', '.join(foreign)}: the predictor was trained on "
                         f"{'+'.join(sorted(families))} / {'+'.join(sorted(datasets))} only")
    return val + extra, {"val": len(val), **{s: len(examples) for s, examples in per_source.items() if examples}}


def recalibrate(predictor_dir: Path, sources: Sequence[Path], on_bad: OnBad = "fail") -> Predictor:
    """Calibrate a trained predictor's intervals on its val split plus `sources` and rewrite its card (weights,
    reference and OOD threshold unchanged). The version gains a suffix from the new quantiles, so caches keyed
    by version never serve an interval of the old calibration; the same inputs give the same version."""
    predictor = Predictor.load(predictor_dir)
    if not predictor.trained or predictor.reference is None or predictor.residuals is None:
        raise TrainError(f"{predictor_dir} is not a trained predictor with a reference (train it with `sne train`)")
    cal_set, counts = calibration_set(predictor, sources, on_bad)
    has_gap = bool(predictor.card.predicts_gap) and all(e.gap is not None for e in cal_set)
    where = "the val split and " + ", ".join(f"{n} checkpoints of {s} (every split)" for s, n in counts.items() if s != "val")
    section = conformal_section(predict_examples(predictor.model, cal_set), cal_set, predictor.reference.cpu(),
                                predictor.residuals.cpu().numpy(), has_gap, where)
    section["sources"] = counts
    path = Path(predictor_dir) / "card.json"
    card = json.loads(path.read_text())
    card["conformal"] = section
    tag = hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:6]
    card["version"] = f"{card.get('created', 'recalibrated')}-{weights_digest(predictor.model)}-c{tag}"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return Predictor.load(predictor_dir)


__all__ = ["calibration_set", "conformal_section", "recalibrate"]
