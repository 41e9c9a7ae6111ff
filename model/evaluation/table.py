"""The evaluation table (issue 9): every method on the same splits, in one run, with uncertainty.

One *setup* = the training sources (zoos or labels files). Every baseline is fit once on their train split;
every SNE predictor given (e.g. ``sne`` = statistics-aware, ``sne_chunks`` / ``sne_stats`` = the one-path ablations) was trained
on them. Each test source's test split is then scored by every method:

* Kendall tau with a 95 % bootstrap interval, resampling test checkpoints *by run*;
* kind of the pair: ``in_distribution`` (families and datasets seen), ``cross_dataset`` (families seen, a new
  dataset), ``cross_arch`` (a family never seen: cross-architecture/family);
* for SNE predictors: the 90 % interval's coverage and mean width, split-conformal (the card's constant
  half-width) and normalised as served (the card's quantile over ``metrics.Difficulty``; for a card without
  one, calibrated here on the val split), the served interval's coverage with a 95 % interval by run, and the
  OOD flag rate (kNN distance above the card's threshold);
* SNE's lead over the best baseline of each kind, with a paired bootstrap interval.

Per kind, tau is the mean over pairs and its interval the percentile interval of the mean of the pairs'
bootstrap replicates. ``results["kendall_tau"]`` keeps the card's shape: per kind, a tau per method by name.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.architecture import signature
from model.evaluation.baselines import StatNN, baseline_predictions
from model.evaluation.metrics import (
    DEFAULT_ALPHAS,
    Difficulty,
    bootstrap_means,
    bootstrap_taus,
    conformal_quantile,
    coverage,
    interval,
    kendall_tau,
    mean_width,
    normalized_interval,
)
from model.evaluation.pooled import layer_tokens, pooled_features, sne_pooled_features
from model.evaluation.statset import StatSetModel
from model.evaluation.table_report import table_markdown
from model.labels import read_labels
from model.predictor import DEFAULT_LEVEL, Predictor
from model.training import Example, load_examples, predict_examples
from model.zoo.families import family_of

SNE_METHODS: tuple[str, ...] = ("sne", "sne_chunks", "sne_stats")
BASELINE_METHODS: tuple[str, ...] = ("statset", "pooled", "pooled_sne", "statnn", "mlp")
METHODS: tuple[str, ...] = SNE_METHODS + BASELINE_METHODS
KINDS: tuple[str, ...] = ("in_distribution", "cross_dataset", "cross_arch")
ALPHA = 1.0 - float(DEFAULT_LEVEL)


def identity(examples: Sequence[Example]) -> tuple[frozenset[str], frozenset[str]]:
    """Families and datasets present in a set of examples."""
    return frozenset(family_of(e.arch) for e in examples), frozenset(e.dataset for e in examples)


def pair_kind(train: tuple[frozenset[str], frozenset[str]], test: tuple[frozenset[str], frozenset[str]]) -> str:
    if not test[0] <= train[0]:
        return "cross_arch"
    return "in_distribution" if test[1] <= train[1] else "cross_dataset"


def _runs(sources: Sequence[Path]) -> dict[Path, str]:
    """Run of every labelled checkpoint (the bootstrap's resampling unit), by absolute path."""
    return {Path(lab.path).resolve(): f"{src}:{lab.run}" for src in sources for lab in read_labels(Path(src))}


class _SNE:
    """One SNE predictor with what its interval columns need, computed once from the setup's train/val."""

    def __init__(self, pred: Predictor, train: list[Example], val: list[Example], k: int = 20) -> None:
        """The served intervals where the card has them (its calibration set may be more than val: `sne
        calibrate`); else calibrated here, split-conformal on val."""
        self.pred = pred
        va = predict_examples(pred.model, val)
        va_true = np.array([e.acc for e in val])
        self.sigma: Difficulty | None = None
        self.q_norm = float("nan")
        if pred.normalized_half_widths(va["emb"][:1]) is None:  # a card without the normalised section
            tr = predict_examples(pred.model, train)
            self.sigma = Difficulty.fit(tr["emb"].numpy(), tr["acc"] - np.array([e.acc for e in train]), k=k)
            self.q_norm = conformal_quantile(np.abs(va["acc"] - va_true) / self.sigma(va["emb"].numpy()), ALPHA)
        card_q = pred.card.conformal.half_width(DEFAULT_LEVEL)
        self.q_const = card_q if card_q is not None else conformal_quantile(va["acc"] - va_true, ALPHA)

    def score(self, test: list[Example], true: np.ndarray) -> tuple[np.ndarray, dict[str, float | None], np.ndarray]:
        """Predictions, the interval/OOD columns, and per checkpoint whether the served (normalised) interval
        covers it (for the coverage's bootstrap interval by run)."""
        out = predict_examples(self.pred.model, test)
        lo, hi = interval(out["acc"], self.q_const)
        served = self.pred.normalized_half_widths(out["emb"])  # [n]: q * sigma(x), as `predict_packed` serves
        if served is not None:
            nlo, nhi = np.clip(out["acc"] - served, 0.0, 1.0), np.clip(out["acc"] + served, 0.0, 1.0)
        else:
            assert self.sigma is not None
            nlo, nhi = normalized_interval(out["acc"], self.sigma(out["emb"].numpy()), self.q_norm)
        flag = unseen_rate = None
        if self.pred.card.ood.threshold is not None and self.pred.reference is not None:  # the served flag
            _, flags, new_arch = self.pred.ood(out["emb"], [signature(e.layers) for e in test])
            flag, unseen_rate = float(np.mean(flags)), float(np.mean(new_arch))
        return out["acc"], {
            "coverage": coverage(true, lo, hi), "width": mean_width(lo, hi),
            "coverage_normalized": coverage(true, nlo, nhi), "width_normalized": mean_width(nlo, nhi),
            "ood_flag_rate": flag, "unseen_architecture_rate": unseen_rate,
        }, ((nlo <= true) & (true <= nhi)).astype(np.float64)


def evaluate_table(
    train_sources: Sequence[Path],
    test_sources: Sequence[Path],
    out_dir: Path,
    predictors: Mapping[str, Path] | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    n_boot: int = 1000,
    statset_epochs: int = 60,
    seed: int = 0,
) -> dict[str, Any]:
    """Score SNE predictors and every baseline on every test source; write table.json and table.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_sources, test_sources = [Path(s) for s in train_sources], [Path(s) for s in test_sources]
    preds = {m: Predictor.load(p) for m, p in (predictors or {}).items()}
    chunk = next(iter(preds.values())).config.chunk_size if preds else 16
    if any(p.config.chunk_size != chunk for p in preds.values()):
        raise ValueError("predictors of one table must share a chunk size (they are scored on the same examples)")
    train = load_examples(train_sources, "train", chunk, max_train, seed, on_bad="skip")
    if not train:
        raise ValueError(f"{train_sources} hold no train checkpoints")
    val = load_examples(train_sources, "val", chunk, None, seed, on_bad="skip") if preds else []
    sne = {m: _SNE(p, train, val) for m, p in preds.items()}
    runs = _runs(train_sources + test_sources)
    tr_states, tr_y = [e.state for e in train], [e.acc for e in train]
    with torch.random.fork_rng(devices=[]):
        fitted = {"statset": _fitter(tr_states, tr_y, statset_epochs, seed)}
    pooled = StatNN(seed=seed).fit(np.stack([pooled_features(s) for s in tr_states]), tr_y)
    pooled_sne = StatNN(seed=seed).fit(np.stack([sne_pooled_features(e.layers) for e in train]), tr_y)
    train_id = identity(train)
    pairs: list[dict[str, Any]] = []
    replicates: dict[str, dict[str, list[np.ndarray]]] = {k: {m: [] for m in METHODS} for k in KINDS}
    covered: dict[str, dict[str, list[np.ndarray]]] = {k: {m: [] for m in SNE_METHODS} for k in KINDS}
    for src in test_sources:
        test = load_examples([src], "test", chunk, max_test, seed, on_bad="skip")
        if not test:
            continue
        true = np.array([e.acc for e in test])
        groups = [runs.get(Path(e.path).resolve(), str(i)) if e.path else str(i) for i, e in enumerate(test)]
        kind = pair_kind(train_id, identity(test))
        te_states = [e.state for e in test]
        predictions: dict[str, np.ndarray | None] = {m: None for m in METHODS}
        extra: dict[str, dict[str, float | None]] = {}
        for m, s in sne.items():
            predictions[m], extra[m], hit = s.score(test, true)
            cov_reps = bootstrap_means(hit, groups, n_boot, seed)
            covered[kind][m].append(cov_reps)
            extra[m]["coverage_normalized_ci95"] = _ci(cov_reps)  # type: ignore[assignment]
        predictions["statset"] = fitted["statset"](te_states)
        predictions["pooled"] = pooled.predict(np.stack([pooled_features(s) for s in te_states]))
        predictions["pooled_sne"] = pooled_sne.predict(np.stack([sne_pooled_features(e.layers) for e in test]))
        predictions.update(baseline_predictions(tr_states, tr_y, te_states, ("statnn", "mlp"), seed=seed))
        row: dict[str, Any] = {
            "train": _name(train_id), "test": _name(identity(test)), "source": str(src), "kind": kind,
            "n_test": len(test), "n_runs": len(set(groups)), "tau": {}, "tau_ci95": {}, "intervals": extra,
        }
        for m, p in predictions.items():
            if p is None:
                row["tau"][m], row["tau_ci95"][m] = None, None
                continue
            reps = bootstrap_taus(p, true, groups, n_boot, seed)
            replicates[kind][m].append(reps)
            row["tau"][m] = kendall_tau(p, true)
            row["tau_ci95"][m] = _ci(reps)
        pairs.append(row)
    results = _summarise(pairs, replicates, covered)
    results["setup"] = {"train_sources": [str(s) for s in train_sources], "n_train": len(train), "n_val": len(val),
                        "predictors": {m: str(p) for m, p in (predictors or {}).items()}, "n_boot": n_boot,
                        "statset_epochs": statset_epochs, "levels": list(DEFAULT_ALPHAS)}
    (out_dir / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "table.md").write_text(table_markdown(results))
    return results


def _fitter(
    states: Sequence[Mapping[str, torch.Tensor]], y: Sequence[float], epochs: int, seed: int
) -> Callable[[Sequence[Mapping[str, torch.Tensor]]], np.ndarray]:
    """The statistics set model fit once per setup (its fit is the expensive part), applied to each test split."""
    model = StatSetModel(epochs=epochs, seed=seed).fit([layer_tokens(s) for s in states], y)
    return lambda test: model.predict([layer_tokens(s) for s in test])


def _name(ident: tuple[frozenset[str], frozenset[str]]) -> str:
    return "+".join(sorted(ident[0])) + "/" + "+".join(sorted(ident[1]))


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def _ci(reps: np.ndarray) -> list[float]:
    return [float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))]


def _lead(tau: dict[str, float | None], reps: dict[str, list[np.ndarray]]) -> dict[str, Any] | None:
    """SNE's lead over the best baseline of one kind (by mean tau) with its paired 95 % interval: the
    replicates of every method resample the same runs (`group_resamples`, one seed), so their difference per
    replicate is a paired bootstrap of the lead. None without an SNE or a baseline."""
    scored = [m for m in BASELINE_METHODS if tau.get(m) is not None and reps[m]]
    if tau.get("sne") is None or not reps["sne"] or not scored:
        return None
    best = max(scored, key=lambda m: tau[m])  # type: ignore[arg-type, return-value]
    diff = np.mean(np.stack(reps["sne"]), 0) - np.mean(np.stack(reps[best]), 0)
    return {"baseline": best, "lead": float(tau["sne"]) - float(tau[best]),  # type: ignore[arg-type]
            "ci95": _ci(diff), "p_lead_below_0.02": float(np.mean(diff < 0.02))}


def _summarise(
    pairs: list[dict[str, Any]], replicates: dict[str, dict[str, list[np.ndarray]]],
    covered: dict[str, dict[str, list[np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Per kind: mean tau per method (card shape), its 95 % interval, SNE's paired lead over the best baseline,
    interval coverage (with a 95 % interval by run)/width and OOD rates."""
    tau: dict[str, dict[str, float | None]] = {}
    ci: dict[str, dict[str, list[float] | None]] = {}
    intervals: dict[str, dict[str, dict[str, float | None]]] = {}
    for k in KINDS:
        rows = [r for r in pairs if r["kind"] == k]
        tau[k] = {m: _mean([r["tau"][m] for r in rows]) for m in METHODS}
        ci[k] = {}
        for m in METHODS:
            reps = replicates[k][m]
            mean_reps = np.mean(np.stack(reps), 0) if reps else None
            ci[k][m] = None if mean_reps is None else [float(np.quantile(mean_reps, 0.025)), float(np.quantile(mean_reps, 0.975))]
        intervals[k] = {
            m: {c: _mean([r["intervals"][m][c] for r in rows if m in r["intervals"]])
                for c in ("coverage", "width", "coverage_normalized", "width_normalized", "ood_flag_rate")}
            for m in SNE_METHODS if any(m in r["intervals"] for r in rows)
        }
        for m, v in intervals[k].items():
            reps = (covered or {}).get(k, {}).get(m) or []
            v["coverage_normalized_ci95"] = _ci(np.mean(np.stack(reps), 0)) if reps else None  # type: ignore[assignment]
    lead = {k: _lead(tau[k], replicates[k]) for k in KINDS}
    sne_cov = {k: (intervals[k].get("sne") or {}).get("coverage") for k in KINDS}
    return {
        "kendall_tau": tau, "kendall_tau_ci95": ci, "sne_lead": lead, "intervals": intervals,
        "coverage": {"nominal": float(DEFAULT_LEVEL), **{k: sne_cov[k] for k in ("in_distribution", "cross_dataset")}},
        "gap_kendall_tau": {k: None for k in KINDS}, "pairs": pairs,
    }


__all__ = ["KINDS", "METHODS", "evaluate_table", "pair_kind"]
