"""What `sne train` refuses and what it warns about, so a predictor is never silently worse than it looks.

- Calibration needs enough validation checkpoints for the served 90 % interval to be finite
  (``MIN_CALIBRATION``): fewer, and training is refused before it starts. Levels that need more (95 %: 19) are
  left out of the card (``calibratable``), so every published quantile is finite by construction.
- A resumed run must have the settings it was started with (``check_resume``): otherwise refuse, keep the old
  settings (``resume="keep"``) or start over (``resume="restart"``).
- After training, SNE is compared with the pooled-statistics baseline on the same validation split, and the OOD
  threshold is checked on the training split (``quality_report``); warnings go into the card and the output.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from model.evaluation.metrics import DEFAULT_ALPHAS, grouped_kendall_tau, kendall_tau

ResumeMode = Literal["check", "keep", "restart"]



def needed(alpha: float) -> int:
    """The smallest n with ceil((n + 1)(1 - alpha)) <= n: the split-conformal quantile is finite from there."""
    return math.ceil((1 - alpha) / alpha - 1e-9)


MIN_CALIBRATION = needed(0.1)  # the 90 % interval the service answers with (9)
LOW_TAU = 0.3  # below this a predictor's ranking is too weak to gate on
# settings that do not change what is trained
_FREE = frozenset({"device", "name", "on_bad_checkpoint"})


class TrainError(ValueError):
    """Training refused, said in one line with what to do instead."""


def calibratable(n_val: int) -> tuple[float, ...]:
    """The published miscoverage levels whose quantile is finite with ``n_val`` calibration points."""
    return tuple(a for a in DEFAULT_ALPHAS if n_val >= needed(a))


def check_calibration(n_val: int, sources: Sequence[Path]) -> None:
    if n_val < MIN_CALIBRATION:
        raise TrainError(
            f"only {n_val} validation checkpoints in {', '.join(map(str, sources))}: calibrating the 90% interval "
            f"needs at least {MIN_CALIBRATION} ({needed(0.05)} for 95%); add checkpoints or runs, or give more "
            "rows split=val"
        )


def check_resume(resume_dir: Path, options: Any, mode: ResumeMode) -> Any:
    """The options to train with: ``options``, or the stored ones (``keep``); refuses changed settings (``check``)."""
    if mode == "restart":
        shutil.rmtree(resume_dir, ignore_errors=True)
        return options
    state = next((p for p in (resume_dir / "state.json", resume_dir / "member-0" / "state.json") if p.exists()), None)
    if state is None:  # one SNE keeps its state in resume/, an ensemble in resume/member-K/
        return options
    stored = json.loads(state.read_text()).get("options")
    now = asdict(options)
    if stored is None:
        changed = ["(settings not recorded by the run that wrote it)"]
    else:
        default = {f.name: f.default for f in fields(options)}  # a setting newer than the run: its default then
        changed = [f"{k}={stored.get(k, default[k])!r} (now {v!r})" for k, v in now.items()
                   if k not in _FREE and stored.get(k, default[k]) != v]
    if not changed:
        return options
    if mode == "keep" and stored is not None:
        known = {f.name for f in fields(options)}
        return type(options)(**{**now, **{k: v for k, v in stored.items() if k in known and k not in _FREE}})
    raise TrainError(
        f"{resume_dir.parent} holds an unfinished or finished run with other settings: {', '.join(changed)}; "
        "pass --resume to continue it with its own settings, or --restart to start over"
    )


def ood_check(val_scores: np.ndarray, train_scores: np.ndarray) -> dict[str, Any]:
    """The flag fires beyond the 99th percentile of val and train scores (as served: training checkpoints
    are in the reference), so the predictor's own training data are (almost) never flagged."""
    # "higher": an observed score, so at most 1 % of each split lies above it even for small splits (with
    # interpolation, the largest of 42 scores is always above the 99th percentile: a 2.4 % flag rate)
    threshold = float(max(np.quantile(val_scores, 0.99, method="higher"), np.quantile(train_scores, 0.99, method="higher")))
    return {
        "threshold": threshold,
        "train_flag_rate": float(np.mean(train_scores > threshold)),
        "val_flag_rate": float(np.mean(val_scores > threshold)),
        "n_train_checked": len(train_scores),
    }


def quality_report(
    sne_val: np.ndarray, true_val: np.ndarray, train_states: Sequence[dict[str, torch.Tensor]], train_y: Sequence[float],
    val_states: Sequence[dict[str, torch.Tensor]], seed: int = 0, groups: Sequence[object] | None = None,
) -> dict[str, Any]:
    """SNE's val τ against the pooled-statistics GBM trained on the same train split, with warnings. With
    `groups` (the val checkpoints' family/dataset) the warning compares the mean of each group's τ, as
    `sne eval` scores a mixture; the pooled τ is kept beside it."""
    from model.evaluation.baselines import (
        fit_predict,  # here: model.evaluation imports model.training
    )

    baseline = fit_predict("pooled", train_states, train_y, val_states, seed=seed)
    tau_sne, tau_base = kendall_tau(sne_val, true_val), kendall_tau(baseline, true_val)
    groups = groups if groups is not None else [0] * len(true_val)
    g_sne, g_base = grouped_kendall_tau(sne_val, true_val, groups), grouped_kendall_tau(baseline, true_val, groups)
    per = " (mean of each family/dataset's)" if len(set(groups)) > 1 else ""
    warnings = []
    if g_sne <= g_base:
        warnings.append(
            f"SNE ranks the validation split worse than the pooled-statistics baseline (τ{per} {g_sne:.3f} vs "
            f"{g_base:.3f}): do not gate on this predictor; train longer, on more checkpoints, or use the baseline"
        )
    if tau_sne < LOW_TAU:
        warnings.append(f"validation τ {tau_sne:.3f} is below {LOW_TAU}: the ranking is too weak to gate on")
    if float(np.std(sne_val)) < 1e-3:
        warnings.append(f"predictions are nearly constant (std {np.std(sne_val):.2e} over {len(sne_val)} checkpoints)")
    return {
        "split": "val", "n": len(true_val), "kendall_tau": {"sne": tau_sne, "pooled": tau_base},
        "grouped_kendall_tau": {"sne": g_sne, "pooled": g_base}, "sne_better": g_sne > g_base, "warnings": warnings,
    }
