"""README's "Bring your own checkpoints" walk-through (examples/byo.sh) run as written, at a small size.

An MLP sweep of mixed widths and a CNN sweep with BatchNorm are labelled in a CSV, trained with LIR on, and
evaluated against the baselines, served from one process and gated with each predictor by name (remote and
--local); then the guards a user meets on the way are checked on the result.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from model.predictor import Predictor
from model.training.guards import TrainError, check_resume
from model.training.train import TrainOptions

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def _run_walkthrough(env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    """examples/byo.sh in its own process group, so a timeout also ends the server it started in the background."""
    proc = subprocess.Popen(["bash", "examples/byo.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"examples/byo.sh ran over {timeout} s:\n{out[-3000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("byo")
    env = {
        **os.environ, "OUT": str(out), "RUNS": "20", "EPOCHS": "2", "CONFIG": "tiny", "THREADS": "1",
        "SNE": f"{sys.executable} -m app.cli", "PY": sys.executable, "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200", "SNE_WARMUP": "false",
    }
    for var in ("SNE_URL", "SNE_API_KEY", "SNE_API_KEYS", "SNE_PREDICTOR_PATH", "SNE_PREDICTORS_DIR", "SNE_REDIS_URL"):
        env.pop(var, None)  # the walk-through as a fresh user runs it, whatever this shell has set
    env.pop("PORT", None)  # the script picks a free port itself
    return out, env, _run_walkthrough(env)


def test_walkthrough_runs_and_both_families_train_with_lir(walkthrough):
    out, _, res = walkthrough
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    for fam in ("mlp", "cnn"):
        text = (out / "predictors" / f"{fam}-digits" / "card.json").read_text()
        assert "Infinity" not in text and "NaN" not in text
        card = json.loads(text)
        assert card["name"] == f"{fam}-digits" and card["zoo"]["archs"] == [fam]
        # every checkpoint of both sweeps has a safe permutation: LIR ran on all of them
        assert card["lir"]["permutable"] == card["splits"]["train"] > 0 and card["lir"]["skipped"] == 0
        assert card["splits"]["val"] >= 9 and all(math.isfinite(q) for q in card["conformal"]["accuracy"].values())
        assert card["ood"]["train_flag_rate"] <= 0.01
        assert set(card["quality"]["kendall_tau"]) == {"sne", "pooled"}
        tau = card["metrics"]["kendall_tau"]
        assert tau["in_distribution"]["pooled"] is not None and tau["cross_arch"]["pooled"] is not None
        if fam == "mlp":  # mixed widths: the fixed-architecture baselines are n/a, not a crash
            assert tau["in_distribution"]["statnn"] is None and tau["in_distribution"]["mlp"] is None
        assert (out / "eval" / f"{fam}-digits" / "results.md").exists()
    assert "pooled GBM val τ" in res.stdout


def test_both_predictors_serve_from_one_process_and_the_gate_picks_one_by_name(walkthrough):
    out, _, res = walkthrough
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    served = re.search(r"^serving at http://127\.0\.0\.1:(\d+): (.*)$", res.stdout, re.M)
    assert served, res.stdout[-3000:]
    assert {"mlp-digits", "cnn-digits"} <= set(served.group(2).split())  # GET /v1/predictors of the one service
    ckpt = out / "mlp" / "mlp-r001-e6.safetensors"
    for mode, name in (("remote", "mlp-digits"), ("remote", "cnn-digits"), ("local", "mlp-digits")):
        report = json.loads((out / "gate" / f"{mode}-{name}.json").read_text())
        assert report["mode"] == mode and report["exit_code"] == 0 and report["passed"], report
        (result,) = report["results"]
        assert result["status"] == "pass" and Path(result["file"]) == ckpt
        assert result["predictor"]["name"] == name and result["predictor"]["trained"] is True
        assert 0.0 <= result["predicted_accuracy"] <= 1.0
        if mode == "remote":
            assert report["url"] == f"http://127.0.0.1:{served.group(1)}"
    # --local loads the same predictor the service serves: same version, same answer for the same file
    remote, local = (json.loads((out / "gate" / f"{m}-mlp-digits.json").read_text())["results"][0] for m in ("remote", "local"))
    assert remote["predictor"]["version"] == local["predictor"]["version"] and remote["sha256"] == local["sha256"]
    assert abs(remote["predicted_accuracy"] - local["predicted_accuracy"]) < 1e-3
    # and the two names are two models: the CNN predictor calls this MLP checkpoint out of distribution
    cnn = json.loads((out / "gate" / "remote-cnn-digits.json").read_text())["results"][0]
    assert cnn["ood"]["flag"] is True and cnn["predictor"]["version"] != remote["predictor"]["version"]
    # the trap stopped the server when the script ended
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(served.group(1))), timeout=2):
        pass


def test_changed_settings_are_refused_then_kept_with_resume(walkthrough):
    out, env, _ = walkthrough
    run = out / "predictors" / "mlp-digits"
    args = [sys.executable, "-m", "app.cli", "train", "--labels", str(out / "mlp.csv"), "--out", str(run),
            "--name", "mlp-digits", "--config", "tiny", "--threads", "1"]
    res = _run([*args, "--epochs", "2", "--lr", "0.01"], env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "lr=0.002 (now 0.01)" in line and "--resume" in line and "--restart" in line


def test_check_resume_modes(tmp_path):
    resume = tmp_path / "resume"
    resume.mkdir()
    (resume / "state.json").write_text(json.dumps({"options": {**TrainOptions(lr=1e-3).__dict__}}))
    with pytest.raises(TrainError, match=r"lr=0.001 \(now 0.003\)"):
        check_resume(resume, TrainOptions(lr=3e-3), "check")
    assert check_resume(resume, TrainOptions(lr=3e-3, device="cuda"), "keep") == TrainOptions(lr=1e-3, device="cuda")
    assert check_resume(resume, TrainOptions(lr=1e-3, name="x"), "check").name == "x"  # a name is not a setting
    stored = {k: v for k, v in TrainOptions(lr=1e-3).__dict__.items() if k != "layer_drop"}  # a run from before it
    (resume / "state.json").write_text(json.dumps({"options": stored}))
    assert check_resume(resume, TrainOptions(lr=1e-3), "check").layer_drop == 0.0  # a newer setting at its default
    with pytest.raises(TrainError, match=r"layer_drop=0.0 \(now 0.5\)"):
        check_resume(resume, TrainOptions(lr=1e-3, layer_drop=0.5), "check")
    assert check_resume(resume, TrainOptions(lr=3e-3), "restart").lr == 3e-3 and not resume.exists()


def test_an_ensemble_trains_each_member_and_resumes_like_one_model(walkthrough, tmp_path):
    out, env, _ = walkthrough
    run = tmp_path / "ens"
    args = [sys.executable, "-m", "app.cli", "train", "--labels", str(out / "mlp.csv"), "--out", str(run),
            "--config", "tiny", "--threads", "1", "--members", "2", "--epochs", "2", "--lir-weight", "0"]
    res = _run(args, env)
    assert res.returncode == 0, res.stderr[-3000:]
    card = json.loads((run / "card.json").read_text())
    assert card["config"]["members"] == 2 and len(card["training"]["best_epoch"]) == 2
    assert len(card["training"]["history"]) == 2 and all(len(h) == 2 for h in card["training"]["history"])
    assert all((run / "resume" / f"member-{k}" / "state.json").exists() for k in range(2))
    pred = Predictor.load(run)
    assert pred.model.__class__.__name__ == "SNEEnsemble" and pred.reference is not None
    assert pred.reference.shape[1] == 2 * pred.config.encoding  # member embeddings side by side
    spent = card["training"]["epoch_seconds"]
    assert len(spent) == 2 and all(s > 0 for s in spent)
    res = _run(args, env)  # every epoch is done: resuming only calibrates again, and keeps what training cost
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "card.json").read_text())["training"]["epoch_seconds"] == spent
    res = _run([*args, "--lr", "0.01"], env)  # the stored settings are found in member-0's state
    assert res.returncode == 2 and "lr=0.002 (now 0.01)" in res.stderr, res.stderr
