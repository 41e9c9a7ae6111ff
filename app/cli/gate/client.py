"""Remote mode: POST each file to a running service, retrying a busy (503) service as Retry-After says."""
from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.cli.gate.verdict import Verdict, decide, error_verdict, read_file

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "SNE_API_KEY"
DEFAULT_TIMEOUT = 120.0
DEFAULT_RETRIES = 3  # extra attempts after a 503
MAX_RETRY_WAIT = 30.0  # seconds; a longer Retry-After is capped
DEFAULT_RETRY_WAIT = 1.0  # seconds, when a 503 carries no usable Retry-After


def _error_message(resp: Any) -> tuple[str | None, str]:
    """(reason, message) from `{"error": {"reason", "message"}}`, FastAPI's `{"detail": ...}` or plain text."""
    try:
        body = resp.json()
    except ValueError:  # not JSON (or not UTF-8)
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
            if unreachable is not None:
                verdicts.append(error_verdict(name, "unreachable", unreachable, sha256=sha))
                continue
            for attempt in range(retries + 1):
                try:
                    resp = client.post(endpoint, content=data, headers=headers)
                except httpx.ConnectError as e:
                    unreachable = f"service unreachable at {url}: {e}"
                    verdict = error_verdict(name, "unreachable", unreachable, sha256=sha)
                except httpx.TimeoutException as e:
                    verdict = error_verdict(name, "timeout", f"no answer from {url} within {timeout:g}s ({type(e).__name__})", sha256=sha)
                except httpx.HTTPError as e:
                    verdict = error_verdict(name, "transport", f"request to {endpoint} failed: {type(e).__name__}: {e}", sha256=sha)
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

