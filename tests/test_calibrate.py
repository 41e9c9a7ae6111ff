"""`sne calibrate`: a trained predictor's intervals recalibrated on its val split plus a zoo it never saw."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from model.evaluation.metrics import conformal_quantile
from model.predictor import Predictor
from model.training import TrainError, TrainOptions, load_split, predict_examples, train
from model.training.calibrate import recalibrate
from model.zoo import generate_zoo
from model.zoo.family_zoo import generate_family_zoo


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(predictor trained on zoo A, zoo A, zoo B: the same sampler with another seed, an MLP zoo)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("calibrate")
    a, b, mlp = root / "a", root / "b", root / "mlp"
    for z, seed in ((a, 0), (b, 1)):
        generate_zoo(z, arch="arch1", dataset="digits", n_runs=20, seed=seed, save_epochs=(0, 1, 2), group_size=20,
                     progress=False)
    generate_family_zoo(mlp, "mlp", n_runs=6, seed=0, save_epochs=(0, 1))
    train([a], root / "pred", TrainOptions(config="tiny", epochs=1, batch_size=16, lir_weight=0.0), progress=False)
    return root / "pred", a, b, mlp


def _scores(pred: Predictor, zoos: list[Path], split: str) -> np.ndarray:
    """|residual| / sigma(x) of a split, with the served sigma (the normalised interval's score)."""
    ex = load_split(zoos, split, pred.config.chunk_size).examples
    out = predict_examples(pred.model, ex)
    q = pred.card.conformal.model_extra["normalized"]["accuracy"]["0.90"]
    sigma = pred.normalized_half_widths(out["emb"]) / q
    return np.abs(out["acc"] - np.array([e.acc for e in ex])) / sigma


def test_recalibrate_on_val_and_a_second_zoo(trained, tmp_path: Path) -> None:
    src, a, b, _ = trained
    before = Predictor.load(src)
    pdir = tmp_path / "p"
    before.save(pdir)  # a copy: the fixture's stays as trained
    (pdir / "card.json").write_text((src / "card.json").read_text())
    after = recalibrate(pdir, [b])
    conf = after.card.conformal.model_extra
    n_b = sum(len(load_split([b], s, after.config.chunk_size).examples) for s in ("train", "val", "test"))
    assert conf["sources"] == {"val": before.card.splits["val"], str(b): n_b}
    assert after.card.conformal.n_calibration == before.card.splits["val"] + n_b
    # the served quantile is the split-conformal one over val and every checkpoint of zoo B, nothing else
    scores = np.concatenate([_scores(before, [a], "val"), *(_scores(before, [b], s) for s in ("train", "val", "test"))])
    assert conf["normalized"]["accuracy"]["0.90"] == pytest.approx(conformal_quantile(scores, 0.1), rel=1e-5)
    # weights, reference and OOD threshold unchanged; a new version, the same one for the same inputs
    assert after.card.ood.threshold == before.card.ood.threshold
    assert torch.equal(after.reference, before.reference)
    assert after.version != before.version and after.version.startswith(before.version + "-c")
    assert recalibrate(pdir, [b]).version == after.version


def test_recalibrate_refuses_training_data_and_other_families(trained) -> None:
    pdir, a, _, mlp = trained
    with pytest.raises(TrainError, match="training source"):
        recalibrate(pdir, [a])
    with pytest.raises(TrainError, match="mlp"):
        recalibrate(pdir, [mlp])
    card = json.loads((pdir / "card.json").read_text())
    assert card["conformal"]["method"] == "split conformal, absolute residuals on the val split"  # untouched


def test_calibrate_command(trained, tmp_path: Path) -> None:
    src, a, b, _ = trained
    pdir = tmp_path / "p"
    Predictor.load(src).save(pdir)
    (pdir / "card.json").write_text((src / "card.json").read_text())
    env = {"SNE_PREDICTOR_PATH": None, "COLUMNS": "200"}
    res = CliRunner().invoke(app, ["calibrate", "--predictor", str(pdir), "--zoo", str(b), "--threads", "1"], env=env)
    assert res.exit_code == 0, res.output
    assert "calibrated" in res.stdout and Predictor.load(pdir).version in res.stdout
    res = CliRunner().invoke(app, ["calibrate", "--predictor", str(pdir), "--zoo", str(a)], env=env)
    assert res.exit_code == 2 and "Traceback" not in res.output
    (line,) = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert line.startswith("error: ") and "training source" in line
