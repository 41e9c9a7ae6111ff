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

The pieces are pure where they can be: `decide` turns one service-shaped result into a `Verdict`;
`gate_remote`/`gate_local` produce verdicts; `render_table`/`render_markdown`/`report_json` format
them; `gate_command` is the typer command (`app.command("gate")(gate_command)`).
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import typer

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "SNE_API_KEY"
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
DEFAULT_TIMEOUT = 120.0
DEFAULT_RETRIES = 3  # extra attempts after a 503
MAX_RETRY_WAIT = 30.0  # seconds; a longer Retry-After is capped
DEFAULT_RETRY_WAIT = 1.0  # seconds, when a 503 carries no usable Retry-After


# --------------------------------------------------------------------------------------------- verdicts


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


# --------------------------------------------------------------------------------------------- remote


def _error_message(resp: Any) -> tuple[str | None, str]:
    """(reason, message) from `{"error": {"reason", "message"}}`, FastAPI's `{"detail": ...}` or plain text."""
    try:
        body = resp.json()
    except Exception:
        text = (resp.text or "").strip()
        return None, text[:300] or resp.reason_phrase or "no message"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return err.get("reason"), str(err.get("message") or err.get("reason") or err)
        if isinstance(err, str):
            return None, err
        detail = body.get("detail")
        if isinstance(detail, dict):
            return detail.get("reason"), str(detail.get("message") or detail.get("reason") or detail)
        if isinstance(detail, list):  # FastAPI validation errors
            msgs = [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
            return None, "; ".join(msgs) or "invalid request"
        if detail is not None:
            return None, str(detail)
    return None, json.dumps(body)[:300]


def retry_after_seconds(value: str | None, default: float = DEFAULT_RETRY_WAIT, cap: float = MAX_RETRY_WAIT) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), clamped to [0, cap]."""
    wait = default
    if value:
        value = value.strip()
        try:
            wait = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                wait = when.timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                wait = default
    if not math.isfinite(wait):
        wait = default
    return min(max(wait, 0.0), cap)


def _http_error(file: str, status: int, reason: str | None, message: str, sha: str | None) -> Verdict:
    if status == 401:
        what = f"401 unauthorized: {message} (set {API_KEY_ENV} to a key the service accepts)"
        return error_verdict(file, "unauthorized", what, sha256=sha)
    if status == 403:
        return error_verdict(file, "forbidden", f"403 forbidden: {message}", sha256=sha)
    if status == 413:
        return error_verdict(file, "too_large", f"413 too large for the service: {message}", sha256=sha)
    if status in (415, 422):
        tag = f" [{reason}]" if reason else ""
        return error_verdict(file, reason or f"http_{status}", f"{status} bad checkpoint: {message}{tag}", sha256=sha)
    if status == 503:
        return error_verdict(file, "busy", f"503 service busy after retries: {message}", sha256=sha)
    tag = f" [{reason}]" if reason else ""
    return error_verdict(file, reason or f"http_{status}", f"HTTP {status}: {message}{tag}", sha256=sha)


def _verdict_from_response(
    resp: Any, name: str, sha: str, min_accuracy: float, use_lower_bound: bool, fail_on_ood: bool
) -> Verdict:
    if resp.status_code != 200:
        reason, message = _error_message(resp)
        return _http_error(name, resp.status_code, reason, message, sha)
    try:
        body = resp.json()
    except ValueError:
        return error_verdict(name, "bad_response", "the service answered 200 with a body that is not JSON", sha256=sha)
    if not isinstance(body, dict):
        return error_verdict(name, "bad_response", "the service answered 200 with JSON that is not an object", sha256=sha)
    body.setdefault("sha256", sha)
    return decide(body, min_accuracy, use_lower_bound, fail_on_ood, file=name)


def gate_remote(
    files: Sequence[str | Path],
    url: str,
    api_key: str | None,
    *,
    min_accuracy: float,
    use_lower_bound: bool = False,
    fail_on_ood: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    sleep: Callable[[float], None] = time.sleep,
    client: Any = None,
) -> list[Verdict]:
    """Verdicts from a running service: one `POST {url}/v1/encode` per file (raw octet-stream body).

    A 503 is retried up to `retries` times, waiting as its Retry-After says (capped at MAX_RETRY_WAIT).
    When the service cannot be reached at all, the remaining files are marked unreachable without
    waiting for each of them to time out.
    """
    import httpx

    endpoint = url.rstrip("/") + "/v1/encode"
    retries = max(0, int(retries))
    headers = {"Content-Type": "application/octet-stream", "Accept": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    own = client is None
    if own:
        client = httpx.Client(timeout=timeout, follow_redirects=False)
    verdicts: list[Verdict] = []
    unreachable: str | None = None
    try:
        for f in files:
            name = str(f)
            read = read_file(f)
            if isinstance(read, Verdict):
                verdicts.append(read)
                continue
            data, sha = read

            def fail(code: str, message: str) -> Verdict:
                return error_verdict(name, code, message, sha256=sha)

            if unreachable is not None:
                verdicts.append(fail("unreachable", unreachable))
                continue
            for attempt in range(retries + 1):
                try:
                    resp = client.post(endpoint, content=data, headers=headers)
                except httpx.ConnectError as e:
                    unreachable = f"service unreachable at {url}: {e}"
                    verdict = fail("unreachable", unreachable)
                except httpx.TimeoutException as e:
                    verdict = fail("timeout", f"no answer from {url} within {timeout:g}s ({type(e).__name__})")
                except httpx.HTTPError as e:
                    verdict = fail("transport", f"request to {endpoint} failed: {type(e).__name__}: {e}")
                else:
                    if resp.status_code == 503 and attempt < retries:
                        sleep(retry_after_seconds(resp.headers.get("Retry-After")))
                        continue
                    verdict = _verdict_from_response(resp, name, sha, min_accuracy, use_lower_bound, fail_on_ood)
                break
            verdicts.append(verdict)
    finally:
        if own:
            client.close()
    return verdicts


# --------------------------------------------------------------------------------------------- local


def result_from_prediction(pred: Any, predictor: Any, sha256: str | None = None) -> dict[str, Any]:
    """A `model.predictor.Prediction` in the service's `/v1/encode` answer shape (what `decide` reads)."""
    return {
        "sha256": sha256,
        "predictor": {"name": predictor.name, "version": predictor.version, "trained": predictor.trained},
        "predicted_accuracy": pred.accuracy,
        "interval": {"low": pred.low, "high": pred.high, "coverage": pred.coverage},
        "ood": {"score": pred.ood_score, "flag": pred.ood_flag, "threshold": predictor.card.ood.threshold},
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


# --------------------------------------------------------------------------------------------- rendering


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


def render_table(verdicts: Sequence[Verdict], min_accuracy: float, use_lower_bound: bool = False, fail_on_ood: bool = False):
    """A rich Table: file, prediction, interval, OOD, verdict, reason."""
    from rich.markup import escape
    from rich.table import Table

    code = exit_code(verdicts)
    title = f"sne gate: {_criterion(min_accuracy, use_lower_bound, fail_on_ood)}"
    caption = f"{_counts(verdicts)}; exit {code}"
    table = Table(title=title, caption=caption)
    for col, just in (("file", "left"), ("predicted", "right"), ("interval", "left"), ("ood", "left"), ("verdict", "center"), ("reason", "left")):
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
    lines = [f"### SNE gate: {head}", "", f"Criterion: {_md(_criterion(min_accuracy, use_lower_bound, fail_on_ood))}. "
             f"{_counts(verdicts)}; exit code {code}.", ""]
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


# --------------------------------------------------------------------------------------------- command


def out_is_tty(stderr: bool = False) -> bool:
    stream = sys.stderr if stderr else sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _check_min_accuracy(value: float) -> float:
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value} is not an accuracy in [0, 1]")
    return value


def gate_command(
    files: list[Path] = typer.Argument(..., help="Checkpoints (.safetensors) to gate.", show_default=False),
    min_accuracy: float = typer.Option(
        ..., "--min-accuracy", callback=_check_min_accuracy,
        help="Pass threshold in [0, 1]: a file passes when its gated value is >= this.", show_default=False,
    ),
    url: str = typer.Option(
        DEFAULT_URL, "--url", envvar="SNE_URL",
        help="Service base URL (POSTs to {url}/v1/encode); the API key is read from $SNE_API_KEY.",
    ),
    local: bool = typer.Option(False, "--local", help="Encode in-process with the predictor instead of calling the service."),
    predictor: Optional[Path] = typer.Option(
        None, "--predictor", envvar="SNE_PREDICTOR_PATH", help="Predictor directory for --local (default: the shipped one).",
    ),
    use_lower_bound: bool = typer.Option(
        False, "--use-lower-bound", help="Gate on the conformal interval's lower bound instead of the point prediction.",
    ),
    fail_on_ood: bool = typer.Option(
        False, "--fail-on-ood", help="Fail out-of-distribution checkpoints instead of trusting their prediction.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of a table."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", min=0.1, help="Seconds per HTTP request (remote mode)."),
) -> None:
    """Gate checkpoints on predicted accuracy: exit 0 all pass, 1 any fails, 2 error.

    Each FILE goes to a running service (--url; API key from $SNE_API_KEY)
    or, with --local, to the same predictor in-process. A file passes when
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

    wide = None if "COLUMNS" in os.environ else 160  # CI logs are not terminals: don't fold at 80
    out = Console(width=None if out_is_tty() else wide)
    err = Console(stderr=True, width=None if out_is_tty(stderr=True) else wide)
    _check_min_accuracy(min_accuracy)  # also when called as a plain function
    if not files:
        err.print("[bold red]error:[/] no files to gate")
        raise typer.Exit(EXIT_ERROR)

    if local:
        try:
            verdicts = gate_local(files, predictor, min_accuracy=min_accuracy, use_lower_bound=use_lower_bound, fail_on_ood=fail_on_ood)
        except Exception as e:  # predictor missing or corrupt: an outage, not a rejection
            msg = f"cannot load the predictor {predictor or '(default)'}: {type(e).__name__}: {e}"
            verdicts = [error_verdict(f, "predictor", msg) for f in files]
    else:
        key = os.environ.get(API_KEY_ENV) or None
        verdicts = gate_remote(files, url, key, min_accuracy=min_accuracy, use_lower_bound=use_lower_bound,
                               fail_on_ood=fail_on_ood, timeout=timeout)

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
