"""The evaluation table on a tiny run: every method on the same splits, kinds, CIs by run, intervals, OOD."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.evaluation.table import KINDS, METHODS, evaluate_table
from model.zoo import generate_zoo, load_index
from model.zoo.family_zoo import generate_family_zoo
from tests.conftest import make_predictor_dir


def _reference_from_zoo(pdir: Path, zoo: Path) -> None:
    """The OOD reference and threshold a trained predictor would have: its zoo's train embeddings, the
    threshold from train and val scores (`model.training.guards.ood_check`, as `sne train` sets it)."""
    from model.predictor import Predictor, knn_score
    from model.training import load_examples, predict_examples
    from model.training.guards import ood_check

    pred = Predictor.load(pdir)
    c = pred.config.chunk_size
    train = predict_examples(pred.model, load_examples([zoo], "train", c))["emb"]
    val = predict_examples(pred.model, load_examples([zoo], "val", c))["emb"]
    ood = ood_check(knn_score(val, train).numpy(), knn_score(train, train).numpy())
    pred.reference = train
    pred.card = pred.card.updated(ood={"threshold": ood["threshold"], "k": 5})
    pred.save(pdir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("table")
    arch1 = root / "arch1-digits"
    generate_zoo(arch1, arch="arch1", dataset="digits", n_runs=20, seed=0, save_epochs=(0, 1, 2), group_size=20,
                 progress=False)
    mlp = root / "mlp-digits"
    generate_family_zoo(mlp, "mlp", n_runs=10, seed=0, save_epochs=(0, 1, 2))
    pdir = make_predictor_dir(root / "predictor")
    _reference_from_zoo(pdir, arch1)
    results = evaluate_table([arch1], [arch1, mlp], root / "out", {"sne": pdir}, n_boot=50, statset_epochs=3)
    return results, root / "out", mlp


def test_table_shape_kinds_and_card_keys(tiny_run: tuple[dict, Path, Path]) -> None:
    results, out, _ = tiny_run
    assert set(results["kendall_tau"]) == set(KINDS)
    for k in KINDS:
        assert set(results["kendall_tau"][k]) == set(METHODS)
    kinds = [r["kind"] for r in results["pairs"]]
    assert kinds == ["in_distribution", "cross_arch"]
    ind, cross = results["kendall_tau"]["in_distribution"], results["kendall_tau"]["cross_arch"]
    assert all(ind[m] is not None for m in ("sne", "statset", "pooled", "pooled_sne", "statnn", "mlp"))
    assert ind["sne_chunks"] is None and ind["sne_stats"] is None  # no one-path predictor given
    assert cross["statnn"] is None and cross["mlp"] is None  # fixed-architecture baselines: n/a, not a crash
    assert cross["pooled"] is not None and cross["statset"] is not None and cross["pooled_sne"] is not None
    assert results["kendall_tau"]["cross_dataset"]["sne"] is None  # no such pair
    on_disk = json.loads((out / "table.json").read_text())
    assert on_disk["kendall_tau"] == results["kendall_tau"]
    md = (out / "table.md").read_text()
    assert "pooled-stats GBM" in md and "arch1/digits → mlp/digits" in md and "OOD flag rate" in md


def test_table_bootstraps_by_run_and_one_pair_kind_equals_its_pair(tiny_run: tuple[dict, Path, Path]) -> None:
    results, _, mlp = tiny_run
    cross = results["pairs"][1]
    test_rows = [r for r in load_index(mlp) if r["split"] == "test"]
    assert cross["n_test"] == len(test_rows) and cross["n_runs"] == len({r["run_id"] for r in test_rows})
    assert cross["n_runs"] < cross["n_test"]  # several epochs per run: the resampling unit is the run
    for m, ci in cross["tau_ci95"].items():
        if ci is not None:
            assert ci[0] <= ci[1]
            assert results["kendall_tau_ci95"]["cross_arch"][m] == pytest.approx(ci)  # one pair: same interval


def test_table_intervals_and_ood(tiny_run: tuple[dict, Path, Path]) -> None:
    results, _, _ = tiny_run
    for r in results["pairs"]:
        v = r["intervals"]["sne"]
        for key in ("coverage", "width", "coverage_normalized", "width_normalized", "ood_flag_rate"):
            assert 0.0 <= v[key] <= 1.0
        assert v["width"] == pytest.approx(0.1, abs=0.02)  # the fixture card's half-width 0.05 (clipped at 0, 1)
        lo, hi = v["coverage_normalized_ci95"]
        assert lo <= v["coverage_normalized"] <= hi
    in_dist_row = results["intervals"]["in_distribution"]["sne"]
    assert in_dist_row["coverage_normalized_ci95"] == pytest.approx(results["pairs"][0]["intervals"]["sne"]["coverage_normalized_ci95"])
    lead = results["sne_lead"]["in_distribution"]  # SNE minus the best baseline by mean tau, paired replicates
    tau = results["kendall_tau"]["in_distribution"]
    best = max((m for m in ("statset", "pooled", "pooled_sne", "statnn", "mlp")), key=lambda m: tau[m])
    assert lead["baseline"] == best and lead["lead"] == pytest.approx(tau["sne"] - tau[best])
    assert lead["ci95"][0] <= lead["ci95"][1] and 0.0 <= lead["p_lead_below_0.02"] <= 1.0
    assert results["sne_lead"]["cross_dataset"] is None  # no such pair
    # the OOD reference is the Arch1 zoo's train split: its test split sits near it, the MLP family far away
    in_dist, cross = (r["intervals"]["sne"]["ood_flag_rate"] for r in results["pairs"])
    assert cross - in_dist > 0.5
