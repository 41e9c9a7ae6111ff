"""Local mode (`--local`): the same predictor class the service uses, loaded in this process."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli.gate.verdict import Verdict, decide, error_verdict, read_file


def result_from_prediction(pred: Any, predictor: Any, sha256: str | None = None) -> dict[str, Any]:
    """A `model.predictor.Prediction` in the service's `/v1/encode` answer shape (what `decide` reads)."""
    return {
        "sha256": sha256,
        "predictor": {"name": predictor.name, "version": predictor.version, "trained": predictor.trained},
        "predicted_accuracy": pred.accuracy,
        "interval": {"low": pred.low, "high": pred.high, "coverage": pred.coverage},
        "ood": {"score": pred.ood_score, "flag": pred.ood_flag, "threshold": (predictor.card.get("ood") or {}).get("threshold")},
        "cached": False,
    }


def gate_local(
    files: Sequence[str | Path],
    predictor_path: str | Path | None = None,
    *,
    min_accuracy: float,
    use_lower_bound: bool = False,
    fail_on_ood: bool = False,
    predictor: Any = None,
) -> list[Verdict]:
    """Verdicts from the predictor loaded in-process (`Predictor.load(predictor_path)`), one file at a time.

    Raises whatever `Predictor.load` raises for a bad predictor path (the command maps it to exit 2).
    """
    from model.checkpoint import load_checkpoint
    from model.errors import CheckpointError
    from model.predictor import Predictor

    pred = predictor if predictor is not None else Predictor.load(predictor_path)
    verdicts: list[Verdict] = []
    for f in files:
        name = str(f)
        read = read_file(f)
        if isinstance(read, Verdict):
            verdicts.append(read)
            continue
        data, sha = read
        try:
            ckpt = load_checkpoint(data)
        except CheckpointError as e:
            verdicts.append(error_verdict(name, e.reason, f"bad checkpoint: {e.message} [{e.reason}]", sha256=sha))
            continue
        del data
        (p,) = pred.predict([ckpt])
        verdicts.append(decide(result_from_prediction(p, pred, sha), min_accuracy, use_lower_bound, fail_on_ood, file=name))
    return verdicts

