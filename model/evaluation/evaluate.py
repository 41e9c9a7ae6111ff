"""`sne eval`: Kendall τ of SNE against the statistics baselines, on the same splits.

For each trained predictor (its card names the labels files or zoos it learned from) and each labels file or
zoo, the test split is scored: same families and datasets -> in-distribution, same families and another
dataset -> cross-dataset, a family the predictor never saw -> cross-architecture. The pooled-statistics
baseline runs on anything; STATNN and the flat MLP only where every checkpoint has one architecture (n/a
otherwise). Relative paths in a card are resolved from where `sne train` ran, else from the card's folder.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from model.evaluation.baselines import BASELINES, baseline_predictions
from model.evaluation.metrics import coverage, interval, kendall_tau
from model.evaluation.report import make_plots, markdown
from model.evaluation.table import evaluate_table
from model.evaluation.table_report import table_markdown
from model.predictor import DEFAULT_LEVEL, Predictor
from model.training.examples import Example, OnBad, load_examples, predict_examples
from model.training.lir import invariance_error

METHODS = ("sne", *BASELINES)
KINDS = ("in_distribution", "cross_dataset", "cross_arch")


def _zoo_id(examples: Sequence[Example]) -> tuple[str, str]:
    return "+".join(sorted({e.arch for e in examples})), "+".join(sorted({e.dataset for e in examples}))


def pair_kind(train: tuple[str, str], test: tuple[str, str]) -> str:
    if not set(test[0].split("+")) <= set(train[0].split("+")):
        return "cross_arch"
    return "in_distribution" if set(test[1].split("+")) <= set(train[1].split("+")) else "cross_dataset"


def card_sources(predictor_dir: Path, dirs: Sequence[str]) -> list[Path]:
    """The card's training sources as paths: absolute as written, or relative to the cwd / the card's folder."""
    out = []
    for d in map(Path, dirs):
        if not d.is_absolute() and not d.exists() and (Path(predictor_dir) / d).exists():
            d = Path(predictor_dir) / d
        out.append(d)
    return out


def evaluate(
    predictor_dirs: Sequence[Path],
    zoo_dirs: Sequence[Path],
    out_dir: Path,
    unregularized: Path | None = None,
    max_test: int | None = None,
    max_baseline_train: int | None = None,
    plots: bool = True,
    on_bad: OnBad = "fail",
    progress: bool = True,
    chunks_only: Path | None = None,
    stats_only: Path | None = None,
    table: bool = True,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Score every predictor on every labels file's / zoo's test split; write results.json, results.md, plots.

    With ``table`` (default), the first predictor's setup is also scored by ``model.evaluation.table`` (every
    method on the same splits, bootstrap CIs, interval width, OOD rates; ``chunks_only`` / ``stats_only``: the
    one-path SNEs of the same setup, the ablation); its per-kind taus become ``results["kendall_tau"]`` (what the first card publishes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[tuple[Path, int], list[Example]] = {}

    def test_split(zoo: Path, chunk_size: int) -> list[Example]:
        if (zoo, chunk_size) not in cache:
            cache[zoo, chunk_size] = load_examples([zoo], "test", chunk_size, max_test, on_bad=on_bad)
        return cache[zoo, chunk_size]

    rows: list[dict[str, Any]] = []
    per_kind: defaultdict[str, defaultdict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    coverage_rows: list[tuple[str, float]] = []
    embeddings: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    first = None
    bar = Progress(disable=not progress, transient=True)
    task = bar.add_task("evaluating", total=len(predictor_dirs) * len(zoo_dirs))
    bar.start()
    for pdir in predictor_dirs:
        pred = Predictor.load(pdir)
        first = first or pred
        bar.update(task, description=f"{pred.name}: loading its training split")
        train_zoos = card_sources(pdir, pred.card.zoo.dirs)
        train_set = load_examples(train_zoos, "train", pred.config.chunk_size, max_baseline_train, on_bad="skip")
        train_id = _zoo_id(train_set)
        for zdir in map(Path, zoo_dirs):
            bar.update(task, description=f"{pred.name} on {zdir.name}")
            test_set = test_split(zdir, pred.config.chunk_size)
            if not test_set:
                bar.advance(task)
                continue
            kind = pair_kind(train_id, _zoo_id(test_set))
            true = np.array([e.acc for e in test_set])
            out = predict_examples(pred.model, test_set)
            scores: dict[str, float | None] = {"sne": kendall_tau(out["acc"], true)}
            base = baseline_predictions([e.state for e in train_set], [e.acc for e in train_set], [e.state for e in test_set])
            scores.update({m: None if p is None else kendall_tau(p, true) for m, p in base.items()})
            has_gap = pred.card.predicts_gap and all(e.gap is not None for e in test_set)
            gap_tau = kendall_tau(out["gap"], np.array([e.gap for e in test_set])) if has_gap else None
            q = pred.card.conformal.half_width(DEFAULT_LEVEL)
            if q is None:
                raise ValueError(f"{pdir}: the card has no {DEFAULT_LEVEL} interval (an uncalibrated predictor)")
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
            if gap_tau is not None:
                per_kind[kind]["gap_sne"].append(gap_tau)
            coverage_rows.append((kind, cov))
            if pred is first:
                embeddings.append((test_name, out["emb"].numpy(), out["acc"], true))
            bar.advance(task)
    bar.stop()
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
        inv_set = load_examples(
            card_sources(predictor_dirs[0], first.card.zoo.dirs), "test", first.config.chunk_size, 256, on_bad="skip"
        )
        plain = Predictor.load(unregularized)
        results["logit_invariance"] = {
            "examples": len(inv_set),
            "mean_abs_logit_change_regularized": invariance_error(first.model, inv_set),
            "mean_abs_logit_change_unregularized": invariance_error(plain.model, inv_set),
        }
        r = results["logit_invariance"]
        r["ratio"] = r["mean_abs_logit_change_unregularized"] / max(r["mean_abs_logit_change_regularized"], 1e-12)
    text = markdown(results)
    if table and first is not None:
        tab = evaluate_table(
            card_sources(predictor_dirs[0], first.card.zoo.dirs), list(zoo_dirs), out_dir,
            {"sne": predictor_dirs[0], **({"sne_chunks": chunks_only} if chunks_only is not None else {}),
             **({"sne_stats": stats_only} if stats_only is not None else {})},
            max_train=max_baseline_train, max_test=max_test, n_boot=n_boot,
        )
        results["kendall_tau_all_predictors"] = results["kendall_tau"]
        results.update(
            kendall_tau=tab["kendall_tau"], kendall_tau_ci95=tab["kendall_tau_ci95"], sne_lead=tab["sne_lead"],
            intervals=tab["intervals"],
            table_pairs=tab["pairs"], table_setup=tab["setup"],
        )
        text = f"## {first.name}: every method on the same splits\n\n{table_markdown(tab)}\n## Per predictor\n\n{text}"
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(text)
    if plots and embeddings:
        make_plots(embeddings, out_dir)
    return results


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None
