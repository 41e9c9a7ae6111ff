"""The evaluation table as markdown (``model.evaluation.table``): tau with 95 % intervals, intervals, OOD."""
from __future__ import annotations

from typing import Any

NAMES = {
    "sne": "SNE", "sne_chunks": "SNE chunks-only", "sne_stats": "SNE stats-only", "statset": "stats set model",
    "pooled": "pooled-stats GBM", "pooled_sne": "SNE-stats GBM", "statnn": "STATNN", "mlp": "MLP",
}


def _tau(t: float | None, ci: list[float] | None) -> str:
    if t is None:
        return "n/a"
    return f"{t:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{t:.3f}"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def table_markdown(results: dict[str, Any]) -> str:
    """Mean tau per evaluation and method (95 % bootstrap interval by run), then per pair, then intervals/OOD."""
    methods = [m for m in NAMES if any(results["kendall_tau"][k].get(m) is not None for k in results["kendall_tau"])]
    head = "| evaluation (mean τ [95 % CI]) | " + " | ".join(NAMES[m] for m in methods) + " |"
    lines = [head, "|---" * (len(methods) + 1) + "|"]
    for k, taus in results["kendall_tau"].items():
        if all(taus.get(m) is None for m in methods):
            continue
        ci = results["kendall_tau_ci95"][k]
        lines.append(f"| {k} | " + " | ".join(_tau(taus.get(m), ci.get(m)) for m in methods) + " |")
    leads = [(k, v) for k, v in (results.get("sne_lead") or {}).items() if v]
    if leads:
        lines += ["", "| evaluation | SNE's lead over the best baseline | paired 95 % CI (by run) | P(lead < 0.02) |",
                  "|---|---|---|---|"]
        for k, v in leads:
            lines.append(f"| {k} | {v['lead']:+.3f} over {NAMES[v['baseline']]} | [{v['ci95'][0]:+.3f}, "
                         f"{v['ci95'][1]:+.3f}] | {v['p_lead_below_0.02']:.2f} |")
    lines += ["", "| train → test | kind | n (runs) | " + " | ".join(NAMES[m] for m in methods) + " |",
              "|---|---|---" + "|---" * len(methods) + "|"]
    for r in results["pairs"]:
        cells = " | ".join(_tau(r["tau"].get(m), r["tau_ci95"].get(m)) for m in methods)
        lines.append(f"| {r['train']} → {r['test']} | {r['kind']} | {r['n_test']} ({r['n_runs']}) | {cells} |")
    rows = [(k, m, v) for k, per in results["intervals"].items() for m, v in per.items()]
    if rows:
        lines += ["", ("| evaluation | predictor | 90 % coverage | mean width | normalised coverage [95 % CI by run] "
                  "| normalised width "
                  "| OOD flag rate |"), "|---|---|---|---|---|---|---|"]
        for k, m, v in rows:
            cov = _f(v["coverage_normalized"])
            if v.get("coverage_normalized_ci95"):
                cov += " [{:.2f}, {:.2f}]".format(*v["coverage_normalized_ci95"])
            lines.append(f"| {k} | {NAMES[m]} | {_f(v['coverage'])} | {_f(v['width'])} | {cov} "
                         f"| {_f(v['width_normalized'])} | {_f(v['ood_flag_rate'])} |")
        lines += ["", "| test split | kind | predictor | OOD flag rate | of which: unseen architecture |",
                  "|---|---|---|---|---|"]
        for r in results["pairs"]:
            for m, v in r["intervals"].items():
                lines.append(f"| {r['test']} | {r['kind']} | {NAMES[m]} | {_f(v['ood_flag_rate'])} "
                             f"| {_f(v.get('unseen_architecture_rate'))} |")
    return "\n".join(lines) + "\n"
