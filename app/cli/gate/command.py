"""`sne gate`, the typer command: validate options, gate remotely or locally, render, exit 0/1/2."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import fail, log_width
from app.cli.gate.client import API_KEY_ENV, DEFAULT_TIMEOUT, DEFAULT_URL, gate_remote
from app.cli.gate.local import gate_local
from app.cli.gate.render import (
    SUMMARY_ENV,
    append_step_summary,
    render_markdown,
    render_table,
    report_json,
)
from app.cli.gate.verdict import error_verdict, exit_code, warnings_for


def _check_min_accuracy(value: float) -> float:
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value} is not an accuracy in [0, 1]")
    return value


def gate_command(
    files: Annotated[list[Path], typer.Argument(help="Checkpoints (.safetensors) to gate.", show_default=False)],
    min_accuracy: Annotated[float, typer.Option(
        "--min-accuracy", callback=_check_min_accuracy,
        help="Pass threshold in [0, 1]: a file passes when its gated value is >= this.", show_default=False,
    )],
    url: Annotated[str, typer.Option(
        "--url", envvar="SNE_URL",
        help="Service base URL (POSTs to {url}/v1/encode); the API key is read from $SNE_API_KEY.",
    )] = DEFAULT_URL,
    local: Annotated[bool, typer.Option(
        "--local", help="Encode in-process with the predictor instead of calling the service.",
    )] = False,
    predictor: Annotated[str | None, typer.Option(
        "--predictor", help="Predictor to gate with: a name the service serves (sent as ?predictor=), or with "
        "--local a directory or a predictor of $SNE_PREDICTORS_DIR (default: the default predictor).",
    )] = None,
    use_lower_bound: Annotated[bool, typer.Option(
        "--use-lower-bound", help="Gate on the conformal interval's lower bound instead of the point prediction.",
    )] = False,
    fail_on_ood: Annotated[bool, typer.Option(
        "--fail-on-ood", help="Fail out-of-distribution checkpoints instead of trusting their prediction.",
    )] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")] = False,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds per HTTP request (remote mode).",
    )] = DEFAULT_TIMEOUT,
) -> None:
    """Gate checkpoints on predicted accuracy: exit 0 all pass, 1 any fails, 2 error.

    Each FILE goes to a running service (--url; API key from $SNE_API_KEY)
    or, with --local, to the same predictor in-process; --predictor NAME
    picks one of several (GET /v1/predictors lists them). A file passes when
    its predicted accuracy (with --use-lower-bound: the conformal interval's
    lower bound) is >= --min-accuracy. With --fail-on-ood, a checkpoint
    flagged out of distribution fails whatever its prediction.

    Exit codes:
    0  every file passed;
    1  at least one file failed and none errored;
    2  error: a file could not be gated (missing/unreadable, rejected as a
       bad checkpoint, service unreachable, 401, 413, 5xx, still 503 after
       retries), the predictor failed to load, or bad usage.
    Errors take precedence over failures.

    With $GITHUB_STEP_SUMMARY set, a markdown summary is appended to it.
    An untrained predictor is still gated on, with a warning (and
    "untrained_predictor": true in --json).
    """
    from rich.console import Console
    from rich.markup import escape

    out = Console(width=log_width())  # made here, not at import: a test runner swaps the streams per call
    err = Console(stderr=True, width=log_width(stderr=True))
    _check_min_accuracy(min_accuracy)  # also when called as a plain function
    if not files:
        fail("no files to gate")

    if local:
        from app.predictors import find_local
        from app.settings import Settings

        try:
            verdicts = gate_local(files, find_local(predictor, Settings()), min_accuracy=min_accuracy,
                                  use_lower_bound=use_lower_bound, fail_on_ood=fail_on_ood)
        # a predictor missing or corrupt (whatever its loader raises) is an outage, not a rejection
        except Exception as e:  # noqa: BLE001
            msg = f"cannot load the predictor {predictor or '(default)'}: {type(e).__name__}: {e}"
            verdicts = [error_verdict(f, "predictor", msg) for f in files]
    else:
        key = os.environ.get(API_KEY_ENV) or None
        verdicts = gate_remote(files, url, key, min_accuracy=min_accuracy, use_lower_bound=use_lower_bound,
                               fail_on_ood=fail_on_ood, timeout=timeout, predictor=predictor)

    code = exit_code(verdicts)
    warnings = warnings_for(verdicts, fail_on_ood)
    for w in warnings:
        err.print(f"[bold yellow]warning:[/] {escape(w)}", markup=True, highlight=False, soft_wrap=True)
    if json_out:
        report = report_json(verdicts, min_accuracy, use_lower_bound, fail_on_ood,
                             mode="local" if local else "remote", url=url, warnings=warnings)
        print(json.dumps(report, indent=2))
    else:
        out.print(render_table(verdicts, min_accuracy, use_lower_bound, fail_on_ood))
    try:
        append_step_summary(render_markdown(verdicts, min_accuracy, use_lower_bound, fail_on_ood, warnings))
    except OSError as e:
        err.print(f"[bold yellow]warning:[/] could not append to ${SUMMARY_ENV}: {escape(str(e))}")
    raise typer.Exit(code)
