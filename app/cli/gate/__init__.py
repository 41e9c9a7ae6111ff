"""`sne gate`: the CI gate. Pass or fail checkpoints on their predicted test accuracy.

    sne gate FILE... --min-accuracy 0.80 [--url URL | --local] [--use-lower-bound] [--fail-on-ood] [--json]

Each FILE is sent to a running service (`POST {url}/v1/encode`, with the key from `$SNE_API_KEY` as
`X-API-Key` when that variable is set and not empty) or, with `--local`, encoded in-process by the same
predictor class the service uses. A file passes when its gated value is at least `--min-accuracy`:
the predicted accuracy, or with `--use-lower-bound` the low end of the conformal interval. With
`--fail-on-ood` a checkpoint the predictor flags as out of distribution fails whatever its prediction.

Exit codes (distinct, so a pipeline can tell a rejection from an outage):

* 0: every file passed.
* 1: at least one file failed the gate, and none errored.
* 2: an error: at least one file could not be gated (unreadable or missing file, a checkpoint the
  service or the parser rejects as malformed, the service unreachable, 401 bad key, 413 too large,
  503 still busy after the retries, any other 4xx/5xx), the predictor could not be loaded, or bad
  usage (e.g. `--min-accuracy` outside [0, 1]). Errors take precedence over failures: one error makes
  the exit 2 even when other files failed.

Output: a table per run (prediction, interval, OOD flag, verdict, reason per file) on stdout, or with
`--json` one JSON object `{"passed", "exit_code", "min_accuracy", ..., "warnings", "results": [...]}`.
Warnings (an untrained predictor, OOD checkpoints, a service warning) go to stderr in both modes and
into `warnings` in the JSON. When `$GITHUB_STEP_SUMMARY` names a file, a markdown summary is appended.

Modules, one job each: `verdict` (the pure decision `decide` -> `Verdict`, exit code, warnings),
`client` (remote mode: HTTP with retries), `local` (in-process predictor), `render` (table, JSON report,
step-summary markdown), `command` (the typer command `gate_command`, registered by `app.cli`).
"""
from __future__ import annotations

from app.cli.gate.client import gate_remote, retry_after_seconds
from app.cli.gate.command import gate_command
from app.cli.gate.local import gate_local
from app.cli.gate.render import render_markdown, render_table, report_json
from app.cli.gate.verdict import (
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_PASS,
    Verdict,
    decide,
    error_verdict,
    exit_code,
)

__all__ = [
    "EXIT_ERROR", "EXIT_FAIL", "EXIT_PASS", "Verdict", "decide", "error_verdict", "exit_code", "gate_command",
    "gate_local", "gate_remote", "render_markdown", "render_table", "report_json", "retry_after_seconds",
]
