"""The gate's three outputs: a rich table, the `--json` report, and GitHub's step-summary markdown."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.gate.verdict import EXIT_ERROR, EXIT_FAIL, EXIT_PASS, Verdict, exit_code

if TYPE_CHECKING:
    from rich.console import JustifyMethod
    from rich.table import Table

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
TABLE_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("file", "left"), ("predicted", "right"), ("interval", "left"), ("ood", "left"), ("verdict", "center"),
    ("reason", "left"),
)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _interval(v: Verdict) -> str:
    if v.low is None or v.high is None:
        return "-"
    cov = f" @{v.coverage:.0%}" if v.coverage is not None else " (uncalibrated)"
    return f"[{v.low:.3f}, {v.high:.3f}]{cov}"


def _ood(v: Verdict) -> str:
    if v.ood_flag is None and v.ood_score is None:
        return "-"
    score = f" ({v.ood_score:.3f})" if v.ood_score is not None else ""
    return ("OOD" if v.ood_flag else "ok") + score


VERDICT_WORD = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}


def _criterion(min_accuracy: float, use_lower_bound: bool, fail_on_ood: bool) -> str:
    on = "conformal lower bound" if use_lower_bound else "predicted accuracy"
    return f"{on} >= {min_accuracy:.3f}" + ("; out-of-distribution fails" if fail_on_ood else "")


def _counts(verdicts: Sequence[Verdict]) -> str:
    n = {s: sum(v.status == s for v in verdicts) for s in ("pass", "fail", "error")}
    return f"{n['pass']} passed, {n['fail']} failed, {n['error']} errored"


def render_table(
    verdicts: Sequence[Verdict], min_accuracy: float, use_lower_bound: bool = False, fail_on_ood: bool = False,
) -> Table:
    """A rich Table: file, prediction, interval, OOD, verdict, reason."""
    from rich.markup import escape
    from rich.table import Table

    code = exit_code(verdicts)
    title = f"sne gate: {_criterion(min_accuracy, use_lower_bound, fail_on_ood)}"
    caption = f"{_counts(verdicts)}; exit {code}"
    table = Table(title=title, caption=caption)
    for col, just in TABLE_COLUMNS:
        table.add_column(col, justify=just, overflow="fold")
    style = {"pass": "bold green", "fail": "bold red", "error": "bold yellow"}
    for v in verdicts:
        table.add_row(
            escape(v.file), _f(v.predicted_accuracy), escape(_interval(v)), _ood(v),
            f"[{style[v.status]}]{VERDICT_WORD[v.status]}[/]", escape(v.reason),
        )
    return table


def _md(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def render_markdown(
    verdicts: Sequence[Verdict], min_accuracy: float, use_lower_bound: bool = False, fail_on_ood: bool = False,
    warnings: Iterable[str] = (),
) -> str:
    """A GitHub-flavoured markdown summary (for `$GITHUB_STEP_SUMMARY`)."""
    code = exit_code(verdicts)
    head = {EXIT_PASS: "✅ passed", EXIT_FAIL: "❌ failed", EXIT_ERROR: "⚠️ error"}[code]
    criterion = _md(_criterion(min_accuracy, use_lower_bound, fail_on_ood))
    lines = [f"### SNE gate: {head}", "", f"Criterion: {criterion}. {_counts(verdicts)}; exit code {code}.", ""]
    names = sorted({f"{v.predictor_name} {v.predictor_version}" for v in verdicts if v.predictor_name}, key=str)
    if names:
        lines += [f"Predictor: {_md(', '.join(names))}", ""]
    for w in warnings:
        lines += [f"> **Warning:** {_md(w)}", ""]
    lines += ["| File | Predicted | Interval | OOD | Verdict | Reason |", "| --- | ---: | --- | --- | :---: | --- |"]
    icon = {"pass": "✅ PASS", "fail": "❌ FAIL", "error": "⚠️ ERROR"}
    for v in verdicts:
        lines.append(
            f"| `{_md(v.file).replace('`', '')}` | {_f(v.predicted_accuracy)} | {_md(_interval(v))} | {_md(_ood(v))} "
            f"| {icon[v.status]} | {_md(v.reason)} |"
        )
    return "\n".join(lines) + "\n\n"


def report_json(
    verdicts: Sequence[Verdict], min_accuracy: float, use_lower_bound: bool = False, fail_on_ood: bool = False,
    *, mode: str = "remote", url: str | None = None, warnings: Sequence[str] = (),
) -> dict[str, Any]:
    code = exit_code(verdicts)
    trained = [v.predictor_trained for v in verdicts if v.predictor_trained is not None]
    return {
        "passed": code == EXIT_PASS,
        "exit_code": code,
        "min_accuracy": min_accuracy,
        "use_lower_bound": use_lower_bound,
        "fail_on_ood": fail_on_ood,
        "mode": mode,
        "url": url if mode == "remote" else None,
        "counts": {s: sum(v.status == s for v in verdicts) for s in ("pass", "fail", "error")},
        "untrained_predictor": (False in trained),
        "warnings": list(warnings),
        "results": [v.to_json() for v in verdicts],
    }


def append_step_summary(markdown: str, path: str | Path | None = None) -> Path | None:
    """Append to `$GITHUB_STEP_SUMMARY` (or `path`); None when unset. OSError propagates."""
    target = path if path is not None else os.environ.get(SUMMARY_ENV)
    if not target:
        return None
    target = Path(target)
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(markdown)
    return target

