"""The `sne` command as a user runs it: registration, lazy imports, one-line errors, and what inspect/encode print.

`sne gate` has its own tests (test_gate.py); zoo/train/eval run end to end in test_pipeline.py's library calls.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from model.checkpoint import load_checkpoint
from model.predictor import Predictor
from tests.nets import checkpoint_file

ROOT = Path(__file__).resolve().parents[1]
RUNNER = CliRunner()
COMMANDS = {"inspect", "encode", "zoo", "train", "eval", "calibrate", "serve", "gate"}


def sne(*args: object):
    return RUNNER.invoke(app, [str(a) for a in args], env={"SNE_PREDICTOR_PATH": None, "COLUMNS": "200"})


def test_every_command_is_registered_and_help_loads_no_model():
    assert {c.name for c in app.registered_commands} == COMMANDS
    code = "import sys, app.cli; heavy = [m for m in ('torch', 'model', 'fastapi', 'uvicorn') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing app.cli pulled in {out.strip()}: keep heavy imports inside the commands"
    res = subprocess.run([sys.executable, "-m", "app.cli", "--help"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and all(name in res.stdout for name in COMMANDS), res.stderr


def test_model_never_imports_app():
    offenders = []
    for path in (ROOT / "model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "app" or n.startswith("app.")]
    assert offenders == []


@pytest.fixture(scope="module")
def arch1(tmp_path_factory) -> Path:
    return checkpoint_file(tmp_path_factory.mktemp("cli"), "arch1")


def test_inspect_json_matches_the_parser(arch1):
    res = sne("inspect", arch1, "--json", "--chunk-size", 16)
    assert res.exit_code == 0, res.output
    report, ckpt = json.loads(res.stdout), load_checkpoint(arch1)
    assert report["parameters"] == ckpt.n_params == sum(r["parameters"] for r in report["layers"])
    assert [r["name"] for r in report["layers"]] == [layer.name for layer in ckpt.layers]
    assert all(r["chunks"] == r["chunks_sampled"] >= 1 for r in report["layers"])  # under the budget: all kept
    assert report["chunk_size"] == 16 and report["connected"] == {"pairs": 3, "connected": 3}
    assert sum(r["chunks"] for r in report["layers"]) == 16 + 256 + 256 + 10 + 4
    default = json.loads(sne("inspect", arch1, "--json").stdout)  # the predictor's chunk size, as the service
    assert default["chunk_size"] == Predictor.load(None).config.chunk_size
    table = sne("inspect", arch1)
    assert table.exit_code == 0 and f"({ckpt.n_params:,}" in table.stdout
    assert all(f"│ {layer.n_params:>10,} │" in table.stdout for layer in ckpt.layers), table.stdout



def test_inspect_piped_keeps_long_layer_names_on_one_line(tmp_path):
    """Piped into a CI log (not a terminal, no COLUMNS), rich would fold a 60-character layer name into
    seven-character pieces at its default 80 columns; the CLI prints 160 wide there instead."""
    import os

    from safetensors.torch import save_file

    name = "encoder.transformer.blocks.11.attention.output_projection_dense"
    path = tmp_path / "long.safetensors"
    save_file({f"{name}.weight": torch.randn(8, 4), "head.weight": torch.randn(2, 8)}, path)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, "-m", "app.cli", "inspect", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert name in res.stdout, res.stdout
    narrow = subprocess.run([sys.executable, "-m", "app.cli", "inspect", str(path)], cwd=ROOT,
                            env={**env, "COLUMNS": "80"}, capture_output=True, text=True, check=False)
    assert narrow.returncode == 0 and name not in narrow.stdout  # COLUMNS still rules: the fold is real

def test_encode_json_matches_the_predictor(arch1):
    res = sne("encode", arch1, "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    pred = Predictor.load(None)
    (want,) = pred.predict([load_checkpoint(arch1)])
    assert body["predictor"]["name"] == pred.name and body["predicted_accuracy"] == pytest.approx(want.accuracy, abs=1e-6)
    assert len(body["embedding"]) == len(want.embedding)


@pytest.mark.parametrize("command", ["inspect", "encode"])
def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, command):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    res = sne(command, bad)
    assert res.exit_code == 2, res.output
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}: ") and line.endswith("[pickle]") and res.stdout == "", line


def test_zoo_train_eval_chain(tmp_path):
    """The three offline commands chained as the README runs them, at the smallest size that has every split."""
    zoo, run, out = tmp_path / "zoo", tmp_path / "run", tmp_path / "eval"
    res = sne("zoo", "--out", zoo, "--runs", 20, "--group-size", 20, "--threads", 1)
    assert res.exit_code == 0, res.output
    assert (zoo / "index.csv").exists() and (zoo / "labels.csv").exists() and "train/val/test runs" in res.stdout
    assert "ZooSummary(" not in res.stdout
    res = sne("train", "--zoo", zoo, "--out", run, "--config", "tiny", "--epochs", 1, "--batch-size", 16, "--threads", 1)
    assert res.exit_code == 0, res.output
    assert f"to {run} (val τ" in res.stdout and Predictor.load(run).trained
    res = sne("eval", "--predictor", run, "--zoo", zoo, "--out", out, "--threads", 1, "--update-card")
    assert res.exit_code == 0, res.output
    assert "in_distribution" in res.stdout and (out / "results.json").exists()
    assert "in_distribution" in Predictor.load(run).card.metrics.kendall_tau
    lead = json.loads((run / "card.json").read_text())["metrics"]["sne_lead"]["in_distribution"]  # served card
    assert lead["baseline"] in ("statset", "pooled", "pooled_sne", "statnn", "mlp") and len(lead["ci95"]) == 2


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    (line,) = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert line.startswith("error: "), res.stderr
    return line


def _usage_error(res) -> str:
    """typer's usage error: exit 2, the message in its box, no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return " ".join(res.stderr.replace("│", " ").split())


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--out", "{tmp}/run", "--labels", "{tmp}/nope.csv"], "{tmp}/nope.csv does not exist"),
    (["train", "--out", "{tmp}/run", "--zoo", "/nope"], "/nope does not exist"),
    (["train", "--out", "{tmp}/run", "--zoo", "{tmp}", "--config", "nope"], "'nope' is not a config; choose from"),
    (["train", "--out", "{tmp}/run"], "give --labels FILE.csv or --zoo DIR"),
    (["train", "--out", "{tmp}/run", "--zoo", "{tmp}", "--on-bad-checkpoint", "ignore"], "'ignore' is not one of"),
    (["zoo", "--out", "{tmp}/z", "--arch", "resnet50"], "'resnet50' is not a zoo architecture"),
    (["eval", "--predictor", "/nope", "--zoo", "{tmp}"], "/nope does not exist"),
    (["encode", "--predictor", "/nope", "{tmp}/x.safetensors"], "/nope does not exist"),
])
def test_bad_values_are_usage_errors(tmp_path, args, message):
    text = _usage_error(sne(*[a.format(tmp=tmp_path) for a in args]))
    assert message.format(tmp=tmp_path) in text, text


def test_bad_labels_file_is_one_line(tmp_path):
    bad = tmp_path / "results.csv"
    bad.write_text("path,acc\na.safetensors,0.5\n")
    line = _one_error_line(sne("train", "--out", tmp_path / "run", "--labels", bad))
    assert line == f"error: {bad}: missing required column 'accuracy' (columns: path, acc)"
    res = sne("--debug", "train", "--out", tmp_path / "run", "--labels", bad)
    assert res.exit_code != 0 and type(res.exception).__name__ == "LabelError"  # --debug: the exception itself


def test_too_few_validation_checkpoints_is_refused_before_training(tmp_path):
    files = [checkpoint_file(tmp_path, "mlp", seed=s) for s in range(6)]
    rows = "".join(f"{f.name},0.{i + 1},{'val' if i < 3 else 'train'}\n" for i, f in enumerate(files))
    (tmp_path / "labels.csv").write_text("path,accuracy,split\n" + rows)
    line = _one_error_line(sne("train", "--out", tmp_path / "run", "--labels", tmp_path / "labels.csv", "--config", "tiny"))
    assert "only 3 validation checkpoints" in line and "needs at least 9" in line
    assert not (tmp_path / "run" / "card.json").exists()
