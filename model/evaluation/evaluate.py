"""`sne eval`: Kendall τ of SNE against STATNN and a flat-weights MLP, on the same splits.

For each trained predictor (its card names the zoos it learned from) and each zoo, the test split is scored:
same architecture and dataset -> in-distribution, same architecture and another dataset -> cross-dataset,
another architecture -> cross-architecture (where the fixed-architecture baselines cannot run at all).
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.evaluation.baselines import fit_predict
from model.evaluation.metrics import coverage, interval, kendall_tau
from model.evaluation.report import make_plots, markdown
from model.predictor import DEFAULT_LEVEL, Predictor
from model.training import Example, invariance_error, load_examples, predict_examples

METHODS = ("sne", "statnn", "mlp")
KINDS = ("in_distribution", "cross_dataset", "cross_arch")


def _zoo_id(examples: Sequence[Example]) -> tuple[str, str]:
    return examples[0].arch, examples[0].dataset


def pair_kind(train: tuple[str, str], test: tuple[str, str]) -> str:
    if train[0] != test[0]:
        return "cross_arch"
    return "in_distribution" if train[1] == test[1] else "cross_dataset"


def evaluate(
    predictor_dirs: Sequence[Path],
    zoo_dirs: Sequence[Path],
    out_dir: Path,
    unregularized: Path | None = None,
    max_test: int | None = None,
    max_baseline_train: int | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Score every predictor on every zoo's test split; write results.json, results.md and plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[tuple[Path, int], list[Example]] = {}

    def test_split(zoo: Path, chunk_size: int) -> list[Example]:
        if (zoo, chunk_size) not in cache:
            cache[zoo, chunk_size] = load_examples([zoo], "test", chunk_size, max_test)
        return cache[zoo, chunk_size]

    rows: list[dict[str, Any]] = []
    per_kind: defaultdict[str, defaultdict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    coverage_rows: list[tuple[str, float]] = []
    embeddings: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    first = None
    for pdir in predictor_dirs:
        pred = Predictor.load(pdir)
        first = first or pred
        train_zoos = [Path(z) for z in pred.card.zoo.dirs]
        train_set = load_examples(train_zoos, "train", pred.config.chunk_size, max_baseline_train)
        train_id = _zoo_id(train_set)
        for zdir in map(Path, zoo_dirs):
            test_set = test_split(zdir, pred.config.chunk_size)
            if not test_set:
                continue
            kind = pair_kind(train_id, _zoo_id(test_set))
            true = np.array([e.acc for e in test_set])
            out = predict_examples(pred.model, test_set)
            scores: dict[str, float | None] = {"sne": kendall_tau(out["acc"], true)}
            for m in ("statnn", "mlp"):
                if kind == "cross_arch":
                    scores[m] = None  # fixed-architecture baselines cannot read another architecture
                    continue
                p = fit_predict(m, [e.state for e in train_set], [e.acc for e in train_set], [e.state for e in test_set])
                scores[m] = kendall_tau(p, true)
            gap_tau = kendall_tau(out["gap"], np.array([e.gap for e in test_set]))
            q = pred.card.conformal.half_width(DEFAULT_LEVEL)
            cov = coverage(true, *interval(out["acc"], q))
            test_name = "/".join(_zoo_id(test_set))
            row = {
                "predictor": pred.name, "train": "/".join(train_id), "test": test_name, "kind": kind,
                "n_test": len(test_set), **{f"tau_{m}": scores[m] for m in METHODS}, "gap_tau_sne": gap_tau,
                f"coverage_{DEFAULT_LEVEL}": cov,
            }
            rows.append(row)
            for m in METHODS:
                if (score := scores[m]) is not None:
                    per_kind[kind][m].append(score)
            per_kind[kind]["gap_sne"].append(gap_tau)
            coverage_rows.append((kind, cov))
            if pred is first:
                embeddings.append((test_name, out["emb"].numpy(), out["acc"], true))
    summary = {k: {m: (float(np.mean(v)) if (v := per_kind[k].get(m)) else None) for m in METHODS} for k in KINDS}
    results: dict[str, Any] = {
        "kendall_tau": summary,
        "gap_kendall_tau": {k: (float(np.mean(v)) if (v := per_kind[k].get("gap_sne")) else None) for k in KINDS},
        "coverage": {
            "nominal": float(DEFAULT_LEVEL),
            "in_distribution": _mean([c for k, c in coverage_rows if k == "in_distribution"]),
            "cross_dataset": _mean([c for k, c in coverage_rows if k == "cross_dataset"]),
        },
        "pairs": rows,
    }
    if unregularized is not None and first is not None:
        inv_set = load_examples([Path(z) for z in first.card.zoo.dirs], "test", first.config.chunk_size, 256)
        plain = Predictor.load(unregularized)
        results["logit_invariance"] = {
            "examples": len(inv_set),
            "mean_abs_logit_change_regularized": invariance_error(first.model, inv_set),
            "mean_abs_logit_change_unregularized": invariance_error(plain.model, inv_set),
        }
        r = results["logit_invariance"]
        r["ratio"] = r["mean_abs_logit_change_unregularized"] / max(r["mean_abs_logit_change_regularized"], 1e-12)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
    if plots and embeddings:
        make_plots(embeddings, out_dir)
    return results


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None
