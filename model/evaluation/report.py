"""What `sne eval` leaves behind: markdown tables, plots, and the evaluation written into a predictor's card."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.predictor import DEFAULT_LEVEL


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(results: dict[str, Any]) -> str:
    """Tables in the paper's format: Kendall τ per train→test pair and method, then averages."""
    lines = [
        "| train → test | kind | n | SNE | pooled GBM | STATNN | MLP | SNE gap τ | 90% coverage |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["pairs"]:
        lines.append(
            f"| {r['train']} → {r['test']} | {r['kind']} | {r['n_test']} | {_fmt(r['tau_sne'])} | {_fmt(r.get('tau_pooled'))} "
            f"| {_fmt(r['tau_statnn'])} | {_fmt(r['tau_mlp'])} | {_fmt(r['gap_tau_sne'])} | {_fmt(r[f'coverage_{DEFAULT_LEVEL}'])} |"
        )
    lines += ["", "| evaluation (mean τ) | SNE | pooled GBM | STATNN | MLP |", "|---|---|---|---|---|"]
    for k, v in results["kendall_tau"].items():
        lines.append(f"| {k} | {_fmt(v['sne'])} | {_fmt(v.get('pooled'))} | {_fmt(v['statnn'])} | {_fmt(v['mlp'])} |")
    if "logit_invariance" in results:
        li = results["logit_invariance"]
        lines += [
            "",
            (f"Logit invariance (mean |Δlogit| under random hidden-unit permutations, {li['examples']} test networks): "
            f"with LIR {li['mean_abs_logit_change_regularized']:.2e}, without {li['mean_abs_logit_change_unregularized']:.2e} "
            f"(ratio {li['ratio']:.2f}; >1 means LIR made the encoder more invariant)."),
        ]
    return "\n".join(lines) + "\n"


def make_plots(embeddings: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], out_dir: Path) -> None:
    """predicted-vs-true scatter and a 2-D PCA of the embeddings, coloured by test zoo.

    ``embeddings``: per test zoo (name, embeddings [n, d], predicted accuracy [n], true accuracy [n]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, _, pred, true in embeddings:
        ax.scatter(true, pred, s=4, alpha=0.5, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="true test accuracy", ylabel="predicted", title="SNE: predicted vs true (test splits)")
    ax.legend(markerscale=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "pred_vs_true.png", dpi=120)
    plt.close(fig)
    allemb = np.concatenate([e for _, e, _, _ in embeddings])
    mean = allemb.mean(0)
    _, _, vt = np.linalg.svd(allemb - mean, full_matrices=False)
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, e, _, _ in embeddings:
        p = (e - mean) @ vt[:2].T
        ax.scatter(p[:, 0], p[:, 1], s=4, alpha=0.5, label=name)
    ax.set(xlabel="PC 1", ylabel="PC 2", title="SNE embeddings (PCA), by zoo")
    ax.legend(markerscale=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "embeddings_pca.png", dpi=120)
    plt.close(fig)


def update_card(predictor_dir: Path, results: dict[str, Any]) -> None:
    """Write the evaluation into a predictor's card, so `GET /v1/predictor` serves the evidence."""
    path = Path(predictor_dir) / "card.json"
    card = json.loads(path.read_text())
    evaluation: dict[str, Any] = {
        "kendall_tau": results["kendall_tau"],
        "gap_kendall_tau": results["gap_kendall_tau"],
        "coverage": results["coverage"],
        "pairs": results["pairs"],
        **({"logit_invariance": results["logit_invariance"]} if "logit_invariance" in results else {}),
        **{k: results[k] for k in ("kendall_tau_ci95", "sne_lead", "intervals") if k in results},  # the evaluation table
    }
    card.setdefault("metrics", {}).update(evaluation)
    path.write_text(json.dumps(card, indent=2) + "\n")
