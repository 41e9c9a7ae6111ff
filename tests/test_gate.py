"""`sne gate`: the pure decision, the HTTP client's error handling, and the command end to end.

End-to-end tests run the real command through typer's CliRunner: in-process (`--local`), against a dead
URL, and against the live FastAPI app served by uvicorn on a free port in a background thread.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import app as CLI
from app.cli.gate import (
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_PASS,
    decide,
    error_verdict,
    exit_code,
    gate_remote,
    render_markdown,
    retry_after_seconds,
)
from model.checkpoint import load_checkpoint
from model.predictor import Predictor
from tests.conftest import FIXTURE_OOD_THRESHOLD, FIXTURE_Q, free_port, live_server, settings_for
from tests.nets import checkpoint_file

RUNNER = CliRunner()
CLEAN_ENV = {"GITHUB_STEP_SUMMARY": None, "SNE_API_KEY": None, "SNE_URL": None}


def gate(*args: object, **env: str | None):
    """Run `sne gate ARGS` and return click's Result (exit_code, stdout, stderr)."""
    return RUNNER.invoke(CLI, ["gate", *map(str, args)], env={**CLEAN_ENV, **env}, catch_exceptions=False)


def as_json(result) -> dict:
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------- decide


def result(acc=0.85, low=0.80, high=0.90, coverage=0.9, flag=False, score=0.1, threshold=0.5, trained=True) -> dict:
    return {
        "sha256": "ab" * 32,
        "predictor": {"name": "p", "version": "v1", "trained": trained},
        "predicted_accuracy": acc,
        "interval": {"low": low, "high": high, "coverage": coverage},
        "ood": {"score": score, "flag": flag, "threshold": threshold},
        "cached": False,
    }


def test_decide_threshold_is_inclusive():
    assert decide(result(acc=0.85), 0.80).passed
    assert decide(result(acc=0.80), 0.80).passed
    v = decide(result(acc=0.79), 0.80, file="m.safetensors")
    assert not v.passed and v.status == "fail" and v.gated_value == 0.79 and v.file == "m.safetensors"
    assert "0.790 < 0.800" in v.reason
    assert decide(result(acc=0.0), 0.0).passed and not decide(result(acc=0.999), 1.0).passed


def test_decide_lower_bound():
    r = result(acc=0.85, low=0.78)
    assert decide(r, 0.80).passed
    v = decide(r, 0.80, use_lower_bound=True)
    assert not v.passed and v.gated_on == "lower_bound" and v.gated_value == 0.78 and "lower bound" in v.reason
    assert decide(r, 0.75, use_lower_bound=True).passed
    # an uncalibrated interval ([0, 1], no coverage) is still gated on, and says so
    v = decide(result(acc=0.9, low=0.0, high=1.0, coverage=None), 0.5, use_lower_bound=True)
    assert not v.passed and "uncalibrated" in v.reason


def test_decide_ood():
    r = result(acc=0.95, flag=True, score=0.9, threshold=0.5)
    v = decide(r, 0.80)
    assert v.passed and "out of distribution" in v.reason and v.ood_flag
    v = decide(r, 0.80, fail_on_ood=True)
    assert not v.passed and v.status == "fail" and "--fail-on-ood" in v.reason and "0.900 > threshold 0.500" in v.reason
    assert decide(result(acc=0.95, flag=False), 0.80, fail_on_ood=True).passed
    # OOD fails even a checkpoint that would clear the lower-bound bar
    assert not decide(r, 0.1, use_lower_bound=True, fail_on_ood=True).passed


def test_decide_reads_identity_and_refuses_missing_numbers():
    v = decide(result(trained=False), 0.5)
    assert (v.predictor_name, v.predictor_version, v.predictor_trained) == ("p", "v1", False)
    assert v.low == 0.80 and v.high == 0.90 and v.coverage == 0.9 and v.ood_threshold == 0.5
    for bad in ({}, {"predicted_accuracy": None}, {"predicted_accuracy": "nan"}, {"predicted_accuracy": float("inf")}):
        v = decide(bad, 0.5)
        assert v.status == "error" and not v.passed and v.error_code == "bad_response"
    assert decide({"predicted_accuracy": 0.9}, 0.5, use_lower_bound=True).status == "error"


def test_exit_code_errors_take_precedence():
    p, f = decide(result(acc=0.9), 0.8), decide(result(acc=0.7), 0.8)
    e = error_verdict("x", "unreadable", "cannot read x")
    assert exit_code([p, p]) == EXIT_PASS == 0
    assert exit_code([p, f]) == EXIT_FAIL == 1
    assert exit_code([p, f, e]) == exit_code([e]) == EXIT_ERROR == 2
    assert exit_code([]) == EXIT_ERROR


def test_markdown_escapes_and_lists_every_file():
    vs = [decide(result(acc=0.9), 0.8, file="a|b.safetensors"), error_verdict("c.safetensors", "pickle", "bad | pickle")]
    md = render_markdown(vs, 0.8, warnings=["w1"])
    assert "### SNE gate: ⚠️ error" in md and "| File |" in md and "> **Warning:** w1" in md
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 and "a\\|b.safetensors" in rows[0] and "✅ PASS" in rows[0] and "⚠️ ERROR" in rows[1]
    assert all(row.count(" | ") == 5 for row in rows)  # escaped pipes keep the column count


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) == 1.0 and retry_after_seconds("soon") == 1.0
    assert retry_after_seconds("9999") == 30.0 and retry_after_seconds("-5") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


# --------------------------------------------------------------------------------------------- HTTP client (mocked)


def _client(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def _ok(acc=0.9) -> httpx.Response:
    return httpx.Response(200, json=result(acc=acc))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    pickle = d / "model.pt"
    pickle.write_bytes(b"\x80\x04\x95" + os.urandom(64))  # what torch.save writes first
    noise = d / "noise.safetensors"
    noise.write_bytes(os.urandom(256))
    return {
        "arch1": checkpoint_file(d, "arch1"), "mlp": checkpoint_file(d, "mlp"), "pickle": pickle, "noise": noise,
        "missing": d / "does-not-exist.safetensors",
    }


def test_remote_retries_503_honouring_retry_after(files):
    calls, waits = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {"reason": "busy", "message": "queue full"}})
        return _ok()

    (v,) = gate_remote([files["arch1"]], "http://sne", "k3y", min_accuracy=0.8, client=_client(handler), sleep=waits.append)
    assert v.passed and waits == [2.0, 2.0] and len(calls) == 3
    req = calls[0]
    assert req.url == "http://sne/v1/encode" and req.headers["X-API-Key"] == "k3y"
    assert req.headers["Content-Type"] == "application/octet-stream" and req.content == files["arch1"].read_bytes()


def test_remote_gives_up_after_bounded_retries(files):
    waits = []
    handler = lambda r: httpx.Response(503, headers={"Retry-After": "600"}, json={"detail": "busy"})  # noqa: E731
    (v,) = gate_remote([files["arch1"]], "http://sne/", None, min_accuracy=0.8, retries=2, client=_client(handler), sleep=waits.append)
    assert v.status == "error" and v.error_code == "busy" and waits == [30.0, 30.0]


@pytest.mark.parametrize("status,body,code,text", [
    (401, {"error": {"reason": "unauthorized", "message": "bad API key"}}, "unauthorized", "SNE_API_KEY"),
    (413, {"detail": "larger than 512 MiB"}, "too_large", "512 MiB"),
    (415, {"error": {"reason": "pickle", "message": "this is a Python pickle"}}, "pickle", "pickle"),
    (422, {"detail": [{"loc": ["body"], "msg": "field required"}]}, "http_422", "field required"),
    (500, None, "http_500", "boom"),
])
def test_remote_maps_http_errors(files, status, body, code, text):
    handler = lambda r: httpx.Response(status, json=body) if body else httpx.Response(status, text="boom")  # noqa: E731
    (v,) = gate_remote([files["arch1"]], "http://sne", None, min_accuracy=0.8, client=_client(handler), sleep=lambda s: None)
    assert v.status == "error" and v.error_code == code and text in v.error and str(status) in v.error


def test_remote_unreadable_file_is_an_error_without_a_request(files):
    seen = []
    vs = gate_remote([files["missing"], files["arch1"]], "http://sne", None, min_accuracy=0.5,
                     client=_client(lambda r: seen.append(r) or _ok()))
    assert [v.status for v in vs] == ["error", "pass"] and vs[0].error_code == "unreadable" and len(seen) == 1


# --------------------------------------------------------------------------------------------- CLI: local and dead URL


@pytest.fixture(scope="module")
def untrained_acc(files, untrained_dir) -> dict[str, float]:
    pred = Predictor.load(untrained_dir)
    assert not pred.trained
    return {k: pred.predict([load_checkpoint(files[k])])[0].accuracy for k in ("arch1", "mlp")}


def test_default_predictor_is_trained_and_gates_without_warning(files):
    assert Predictor.load(None).trained
    res = gate(files["arch1"], "--min-accuracy", 0.0, "--local", "--json", SNE_PREDICTOR_PATH=None)
    assert res.exit_code == 0, res.output
    report = as_json(res)
    assert report["untrained_predictor"] is False and not any("UNTRAINED" in w for w in report["warnings"])


def test_local_pass_fail_and_untrained_warning(files, untrained_acc, untrained_dir):
    acc = untrained_acc["arch1"]
    ok = gate(files["arch1"], "--min-accuracy", acc - 0.01, "--local", SNE_PREDICTOR_PATH=str(untrained_dir))
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.stdout and "UNTRAINED" in ok.stderr
    bad = gate(files["arch1"], "--min-accuracy", acc + 0.01, "--local", "--json", SNE_PREDICTOR_PATH=str(untrained_dir))
    assert bad.exit_code == 1
    report = as_json(bad)
    assert report["passed"] is False and report["exit_code"] == 1 and report["untrained_predictor"] is True
    assert report["mode"] == "local" and any("UNTRAINED" in w for w in report["warnings"])
    (r,) = report["results"]
    assert r["status"] == "fail" and r["predictor"]["trained"] is False
    assert r["predicted_accuracy"] == pytest.approx(acc, abs=1e-6)


def test_local_errors_exit_2(files, untrained_acc, untrained_dir):
    low = untrained_acc["arch1"] - 0.01
    for f in ("pickle", "noise", "missing"):
        res = gate(files[f], "--min-accuracy", low, "--local", "--json", SNE_PREDICTOR_PATH=str(untrained_dir))
        assert res.exit_code == 2, (f, res.output)
        (r,) = as_json(res)["results"]
        assert r["status"] == "error" and r["error"]["message"]
    res = gate(files["pickle"], "--min-accuracy", low, "--local", "--json", SNE_PREDICTOR_PATH=str(untrained_dir))
    assert as_json(res)["results"][0]["error"]["reason"] == "pickle"
    # an error outranks a failure and a pass in the same run
    res = gate(files["arch1"], files["missing"], "--min-accuracy", low, "--local", SNE_PREDICTOR_PATH=str(untrained_dir))
    assert res.exit_code == 2 and "PASS" in res.stdout and "ERROR" in res.stdout
    res = gate(files["arch1"], "--min-accuracy", 0.5, "--local", "--predictor", files["missing"], "--json")
    assert res.exit_code == 2 and "cannot load the predictor" in as_json(res)["results"][0]["error"]["message"]


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "abc"])
def test_min_accuracy_is_validated(files, bad):
    res = gate(files["arch1"], "--min-accuracy", bad, "--local")
    assert res.exit_code == 2 and "min-accuracy" in res.output


def test_min_accuracy_is_required(files):
    assert gate(files["arch1"], "--local").exit_code == 2


def test_dead_url_is_an_error_for_every_file(files, tmp_path):
    summary = tmp_path / "summary.md"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = gate(files["arch1"], files["mlp"], "--min-accuracy", 0.5, "--url", url, "--json", GITHUB_STEP_SUMMARY=str(summary))
    assert res.exit_code == 2
    report = as_json(res)
    assert report["passed"] is False and report["url"] == url
    assert [r["error"]["reason"] for r in report["results"]] == ["unreachable", "unreachable"]
    assert "⚠️ error" in summary.read_text()
    # SNE_URL is the default --url
    res = gate(files["arch1"], "--min-accuracy", 0.5, SNE_URL=url)
    assert res.exit_code == 2 and "unreachable" in res.stdout


# --------------------------------------------------------------------------------------------- CLI: live service

API_KEY = "gate-test-key"


@pytest.fixture(scope="module")
def service(svc_predictor_dir):
    """The real FastAPI app with the fixture predictor and one API key, on a free port."""
    from app.main import create_app

    with live_server(create_app(settings_for(svc_predictor_dir, api_keys=[API_KEY], warmup=False))) as url:
        yield url


@pytest.fixture(scope="module")
def expected(svc_predictor_dir, files) -> dict[str, object]:
    """What the fixture predictor says, computed directly: the gate must agree."""
    pred = Predictor.load(svc_predictor_dir)
    return {k: pred.predict([load_checkpoint(files[k])])[0] for k in ("arch1", "mlp")}


def remote(service, *args, **env):
    return gate(*args, "--url", service, **{"SNE_API_KEY": API_KEY, **env})


def test_live_pass_and_fail(service, files, expected):
    acc = expected["arch1"].accuracy
    ok = remote(service, files["arch1"], "--min-accuracy", round(acc - 0.01, 4), "--json")
    assert ok.exit_code == 0, ok.output
    report = as_json(ok)
    assert report["passed"] is True and report["exit_code"] == 0 and report["mode"] == "remote"
    assert report["untrained_predictor"] is False and report["warnings"] == []
    (r,) = report["results"]
    assert r["status"] == "pass" and r["file"] == str(files["arch1"])
    assert r["predicted_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert r["interval"]["low"] == pytest.approx(acc - FIXTURE_Q, abs=1e-4)
    assert r["interval"]["high"] == pytest.approx(acc + FIXTURE_Q, abs=1e-4)
    assert r["interval"]["coverage"] == pytest.approx(0.9)
    assert r["ood"]["flag"] is False and r["ood"]["threshold"] == pytest.approx(FIXTURE_OOD_THRESHOLD)
    assert r["predictor"]["name"] == "svc-fixture" and r["predictor"]["trained"] is True
    assert len(r["sha256"]) == 64

    no = remote(service, files["arch1"], "--min-accuracy", round(acc + 0.01, 4))
    assert no.exit_code == 1, no.output
    assert "FAIL" in no.stdout and "exit 1" in no.stdout


def test_live_lower_bound(service, files, expected):
    acc = expected["arch1"].accuracy
    bar = round(acc - FIXTURE_Q / 2, 4)  # between the lower bound and the prediction
    assert remote(service, files["arch1"], "--min-accuracy", bar).exit_code == 0
    res = remote(service, files["arch1"], "--min-accuracy", bar, "--use-lower-bound", "--json")
    assert res.exit_code == 1
    (r,) = as_json(res)["results"]
    assert r["gated_on"] == "lower_bound" and r["gated_value"] == pytest.approx(acc - FIXTURE_Q, abs=1e-4)


def test_live_fail_on_ood(service, files, expected):
    assert not expected["arch1"].ood_flag and expected["mlp"].ood_flag
    bar = round(min(p.accuracy for p in expected.values()) - 0.01, 4)
    trusted = remote(service, files["arch1"], files["mlp"], "--min-accuracy", bar)
    assert trusted.exit_code == 0, trusted.output
    assert "out of distribution" in trusted.stderr and "OOD" in trusted.stdout
    res = remote(service, files["arch1"], files["mlp"], "--min-accuracy", bar, "--fail-on-ood", "--json")
    assert res.exit_code == 1
    a, m = as_json(res)["results"]
    assert a["status"] == "pass" and m["status"] == "fail" and m["ood"]["flag"] is True
    assert "out of distribution" in m["reason"]


def test_live_errors_exit_2(service, files, expected):
    bar = round(expected["arch1"].accuracy - 0.01, 4)
    res = remote(service, files["pickle"], files["noise"], files["missing"], "--min-accuracy", bar, "--json")
    assert res.exit_code == 2, res.output
    rs = as_json(res)["results"]
    assert [r["status"] for r in rs] == ["error"] * 3
    assert "415" in rs[0]["error"]["message"] and "pickle" in rs[0]["error"]["message"]
    assert rs[1]["error"]["message"].startswith(("415", "422"))
    assert rs[2]["error"]["reason"] == "unreadable"
    # errors win over failures and passes
    res = remote(service, files["arch1"], files["mlp"], files["pickle"], "--min-accuracy", bar, "--fail-on-ood")
    assert res.exit_code == 2
    # a wrong or missing key is an outage of the gate, not a rejection of the checkpoint
    for key in ("wrong-key", None):
        res = remote(service, files["arch1"], "--min-accuracy", bar, "--json", SNE_API_KEY=key)
        assert res.exit_code == 2
        assert as_json(res)["results"][0]["error"]["reason"] == "unauthorized"


def test_live_step_summary(service, files, expected, tmp_path):
    summary = tmp_path / "step-summary.md"
    summary.write_text("# earlier step\n")
    acc = expected["arch1"].accuracy
    remote(service, files["arch1"], "--min-accuracy", round(acc - 0.01, 4), GITHUB_STEP_SUMMARY=str(summary))
    remote(service, files["arch1"], files["mlp"], "--min-accuracy", round(acc - 0.01, 4), "--fail-on-ood", "--json",
           GITHUB_STEP_SUMMARY=str(summary))
    md = summary.read_text()
    assert md.startswith("# earlier step\n")  # appended, never truncated
    assert md.count("| File | Predicted | Interval | OOD | Verdict | Reason |") == 2
    assert "### SNE gate: ✅ passed" in md and "### SNE gate: ❌ failed" in md
    assert f"| `{files['arch1']}` | {acc:.3f} |" in md
    assert "svc-fixture" in md and "@90%" in md


def test_local_matches_remote(service, files, svc_predictor_dir, expected):
    bar = round(expected["arch1"].accuracy - 0.01, 4)
    args = (files["arch1"], files["mlp"], files["pickle"], "--min-accuracy", bar, "--fail-on-ood", "--json")
    rem = as_json(remote(service, *args))
    loc = as_json(gate(*args, "--local", "--predictor", svc_predictor_dir))
    assert rem["exit_code"] == loc["exit_code"] == 2
    assert [r["status"] for r in rem["results"]] == ["pass", "fail", "error"]
    for r, l in zip(rem["results"], loc["results"]):
        assert (r["file"], r["status"], r["sha256"]) == (l["file"], l["status"], l["sha256"])
        if r["status"] != "error":
            assert r["predicted_accuracy"] == pytest.approx(l["predicted_accuracy"], abs=1e-4)
            assert r["ood"]["flag"] == l["ood"]["flag"] and r["predictor"] == l["predictor"]
    ok = (files["arch1"], "--min-accuracy", round(expected["arch1"].accuracy - 0.01, 4), "--json")
    assert remote(service, *ok).exit_code == gate(*ok, "--local", "--predictor", svc_predictor_dir).exit_code == 0
