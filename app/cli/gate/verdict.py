"""The gate's decision: one service-shaped result -> a `Verdict`; verdicts -> exit code and warnings.

Pure (no I/O) except `read_file`, which turns an unreadable file into an error verdict (remote mode).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2


@dataclass
class Verdict:
    """The gate's decision on one file (or why it could not decide: `error`)."""

    file: str
    passed: bool
    reason: str
    predicted_accuracy: float | None = None
    low: float | None = None
    high: float | None = None
    coverage: float | None = None
    ood_flag: bool | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None
    gated_on: str = "predicted_accuracy"  # or "lower_bound"
    gated_value: float | None = None
    predictor_name: str | None = None
    predictor_version: str | None = None
    predictor_trained: bool | None = None
    sha256: str | None = None
    cached: bool | None = None
    warning: str | None = None  # the service's own warning, if it sent one
    error: str | None = None  # set when the file could not be gated
    error_code: str | None = None  # short stable code: unreadable, unreachable, unauthorized, http_503, ...

    @property
    def status(self) -> str:
        return "error" if self.error is not None else ("pass" if self.passed else "fail")

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "status": self.status,
            "passed": self.passed,
            "reason": self.reason,
            "predicted_accuracy": self.predicted_accuracy,
            "interval": {"low": self.low, "high": self.high, "coverage": self.coverage},
            "ood": {"score": self.ood_score, "flag": self.ood_flag, "threshold": self.ood_threshold},
            "gated_on": self.gated_on,
            "gated_value": self.gated_value,
            "predictor": {"name": self.predictor_name, "version": self.predictor_version, "trained": self.predictor_trained},
            "sha256": self.sha256,
            "cached": self.cached,
            "warning": self.warning,
            "error": None if self.error is None else {"reason": self.error_code, "message": self.error},
        }


def error_verdict(file: str | Path, code: str, message: str, *, sha256: str | None = None) -> Verdict:
    return Verdict(file=str(file), passed=False, reason=f"error: {message}", error=message, error_code=code, sha256=sha256)


def read_file(f: str | Path) -> tuple[bytes, str] | Verdict:
    """The file's bytes and sha256, or the error verdict of a file that cannot be read."""
    try:
        data = Path(f).read_bytes()
    except OSError as e:
        return error_verdict(f, "unreadable", f"cannot read {f}: {e.strerror or e}")
    return data, hashlib.sha256(data).hexdigest()


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def decide(
    result: Mapping[str, Any],
    min_accuracy: float,
    use_lower_bound: bool = False,
    fail_on_ood: bool = False,
    *,
    file: str | Path = "",
) -> Verdict:
    """The verdict on one result shaped like the service's `/v1/encode` answer (pure: no I/O).

    `result` needs `predicted_accuracy`; `interval` {low, high, coverage}, `ood` {score, flag, threshold},
    `predictor` {name, version, trained}, `sha256`, `cached` and `warning` are read when present.
    Passes when the gated value (prediction, or the interval's low end with `use_lower_bound`) is
    >= `min_accuracy` and, with `fail_on_ood`, the checkpoint is not flagged out of distribution.
    A result without a usable number is an error verdict (the gate cannot decide).
    """
    interval = result.get("interval") or {}
    ood = result.get("ood") or {}
    predictor = result.get("predictor") or {}
    acc = _num(result.get("predicted_accuracy"))
    low, high = _num(interval.get("low")), _num(interval.get("high"))
    flag = ood.get("flag")
    v = Verdict(
        file=str(file),
        passed=False,
        reason="",
        predicted_accuracy=acc,
        low=low,
        high=high,
        coverage=_num(interval.get("coverage")),
        ood_flag=None if flag is None else bool(flag),
        ood_score=_num(ood.get("score")),
        ood_threshold=_num(ood.get("threshold")),
        gated_on="lower_bound" if use_lower_bound else "predicted_accuracy",
        predictor_name=predictor.get("name"),
        predictor_version=predictor.get("version"),
        predictor_trained=None if predictor.get("trained") is None else bool(predictor.get("trained")),
        sha256=result.get("sha256"),
        cached=result.get("cached"),
        warning=result.get("warning"),
    )
    value = low if use_lower_bound else acc
    label = "lower bound" if use_lower_bound else "predicted accuracy"
    if value is None:
        v.error_code = "bad_response"
        v.error = f"the result has no usable {label} ({'interval.low' if use_lower_bound else 'predicted_accuracy'})"
        v.reason = f"error: {v.error}"
        return v
    v.gated_value = value
    if use_lower_bound and v.coverage is None:
        label = "lower bound (uncalibrated interval)"
    ood_note = ""
    if v.ood_flag:
        ood_note = "out of distribution"
        if v.ood_score is not None and v.ood_threshold is not None:
            ood_note += f" (score {v.ood_score:.3f} > threshold {v.ood_threshold:.3f})"
    if v.ood_flag and fail_on_ood:
        v.passed = False
        v.reason = f"{ood_note}; --fail-on-ood rejects it ({label} {value:.3f})"
        return v
    v.passed = value >= min_accuracy
    v.reason = f"{label} {value:.3f} {'>=' if v.passed else '<'} {min_accuracy:.3f}"
    if v.ood_flag:
        v.reason += f"; {ood_note}: the prediction may be unreliable"
    return v


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """0 all passed, 1 any failed (none errored), 2 any errored (errors win over failures)."""
    if not verdicts or any(v.error is not None for v in verdicts):
        return EXIT_ERROR
    return EXIT_PASS if all(v.passed for v in verdicts) else EXIT_FAIL


def warnings_for(verdicts: Sequence[Verdict], fail_on_ood: bool = False) -> list[str]:
    """Human warnings: untrained predictor, OOD checkpoints trusted anyway, service warnings."""
    out: list[str] = []
    untrained = {(v.predictor_name, v.predictor_version) for v in verdicts if v.predictor_trained is False}
    for name, version in sorted(untrained, key=str):
        out.append(
            f"predictor {name} {version} is UNTRAINED (random weights): its predicted accuracies are meaningless, "
            "so these verdicts say nothing about the checkpoints. Serve a trained predictor (`sne train`)."
        )
    if not fail_on_ood:
        ood = [v.file for v in verdicts if v.ood_flag and v.error is None]
        if ood:
            out.append(f"out of distribution, prediction trusted anyway (use --fail-on-ood to reject): {', '.join(ood)}")
    for w in sorted({v.warning for v in verdicts if v.warning}):
        out.append(f"service: {w}")
    return out

