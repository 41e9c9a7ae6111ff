"""README's "Bring your own checkpoints" walk-through (examples/byo.sh) run as written, at a small size.

An MLP sweep of mixed widths and a CNN sweep with BatchNorm are labelled in a CSV, trained with LIR on, and
evaluated against the baselines; then the guards a user meets on the way are checked on the result.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.training.guards import TrainError, check_resume
from model.training.train import TrainOptions

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("byo")
    env = {
        **os.environ, "OUT": str(out), "RUNS": "20", "EPOCHS": "2", "CONFIG": "tiny", "THREADS": "1",
        "SNE": f"{sys.executable} -m app.cli", "PY": sys.executable, "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200",
    }
    return out, env, _run(["bash", "examples/byo.sh"], env)


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
    assert check_resume(resume, TrainOptions(lr=3e-3), "restart").lr == 3e-3 and not resume.exists()
