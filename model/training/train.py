"""`sne train`: fit SNE to labelled checkpoints' test accuracies (binary cross-entropy, paper §3.7, plus a
ranking term).

Robust on 2 CPU cores: AdamW with linear warm-up and cosine decay, gradient clipping, a pairwise ranking loss
beside BCE (Kendall τ, the metric, is a rank measure), a per-step chunk budget, early stopping on val τ keeping
the best epoch, and the spread of val predictions logged every epoch so a collapse to a constant shows at once.

Adds the v2 paper's Logit Invariance Regularization (``model.training.lir``) and a second head for the
generalization gap. Each epoch is checkpointed (``model.training.resume``), so an interrupted run resumes;
``finalize`` calibrates the chosen model and writes its card. Sources are labels CSV files or zoo directories
(``model.labels``); ``model.training.guards`` refuses what cannot be calibrated or resumed honestly.
"""
from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model.admission import Limits
from model.architecture import seen_architectures, signature
from model.config import get_config
from model.evaluation.metrics import grouped_kendall_tau, kendall_tau
from model.packing import pack
from model.predictor import OOD_K, Predictor, knn_score, weights_digest
from model.sne import SNE, Encoder, SNEOutput, build_encoder
from model.training.calibrate import conformal_section
from model.training.examples import Example, OnBad, drop_layers, hide_kinds, load_split, predict_examples, sample_chunks
from model.training.guards import (
    ResumeMode,
    TrainError,
    check_calibration,
    check_resume,
    ood_check,
    quality_report,
)
from model.training.lir import lir_coverage, lir_penalty
from model.training.resume import load_resume, save_resume
from model.zoo.families import family_of


@dataclass
class TrainOptions:
    """What `sne train` takes; stored in the card so a predictor says how it was trained."""

    config: str = "small"
    stats_view: str = "raw"  # the config's statistics view: raw, or relative (model.stats.relative_view)
    stats_encoding: str = "standard"  # standard (mean/std), or ple: piecewise-linear over quantile bins
    pair_stats: bool = False  # the layers' pair statistics (model.pairs) reach the encoder
    layer_count: bool = False  # log(layer count) reaches the network embedding (SNEConfig.layer_count)
    members: int = 1  # SNEs trained from seeds seed..seed+members-1, averaged (model.sne.SNEEnsemble)
    collapse_retries: int = 2  # a member whose kept epoch predicts a constant is retrained from another seed
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3  # peak learning rate, after warm-up
    weight_decay: float = 0.01
    warmup: float = 0.05  # share of all steps spent warming up linearly; cosine decay to 0 afterwards
    clip_grad: float = 1.0  # max gradient norm (0 = off)
    rank_weight: float = 1.0  # pairwise logistic ranking loss beside BCE (0 = off)
    rank_pairs: str = "all"  # all: every pair of a batch is ranked; within: only pairs of one family and dataset
    select_on: str = "pooled"  # val τ that picks the epoch: pooled, or grouped (mean of each family/dataset's)
    balance: bool = False  # draw each epoch's checkpoints so every family/dataset weighs the same (with replacement)
    patience: int = 0  # stop after this many epochs without a better val τ (0 = run all epochs)
    train_chunks: int = 64  # chunks per part seen in a training step, sampled anew each time (0 = all)
    lir_weight: float = 1.0  # 0 turns Logit Invariance Regularization off
    lir_fraction: float = 0.25  # share of each batch that is also encoded permuted
    gap_weight: float = 1.0
    gap_detach: bool = False  # the gap head reads the embedding without steering it (the accuracy ranking alone does)
    layer_drop: float = 0.0  # chance each middle depth level is left out of a training step (depth augmentation)
    kind_drop: float = 0.0  # chance each layer's kind is shown as `other` in a training step (type augmentation)
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and kept instead (0 = off)
    max_train: int | None = None  # subsample the train split (CPU budgets)
    max_eval: int | None = None  # subsample the val split used for model selection and calibration
    seed: int = 0
    device: str = "cpu"
    name: str | None = None
    on_bad_checkpoint: OnBad = "fail"  # a checkpoint that cannot be read: stop with the list, or skip it


COLLAPSE_STD = 1e-3  # val predictions spread less than this: the model predicts a constant
RETRY_SEED_STEP = 1000  # a collapsed member k is retrained from seed + k + 1000, then + 2000, ...


def kept_collapsed(run: dict) -> bool:
    """Whether the epoch a member keeps predicted a constant on val (it ranks by float noise, if at all)."""
    kept = next((h for h in run["history"] if h["epoch"] == run.get("best_epoch")), None)
    return kept is not None and kept["val_pred_std"] < COLLAPSE_STD


def ranking_loss(
    logit: torch.Tensor, target: torch.Tensor, margin: float = 0.01, group: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise logistic loss over every ordered pair of the batch whose targets differ by more than `margin`;
    with `group`, only pairs within one group (τ is scored per zoo: across families BCE sets the levels)."""
    diff = target[:, None] - target[None, :]  # [b, b]
    pairs = diff > margin  # [b, b]: i should rank above j
    if group is not None:
        pairs &= group[:, None] == group[None, :]
    if not bool(pairs.any()):
        return logit.sum() * 0.0
    return F.softplus(-(logit[:, None] - logit[None, :])[pairs]).mean()


def gap_loss(model: SNE, out: SNEOutput, target: torch.Tensor, detach: bool) -> torch.Tensor:
    """MSE of the gap head. With `detach` its gradient stops at the embedding: the gap head reads the
    embedding, but the second target cannot pull the encoder away from ranking accuracy."""
    gap = model.gap_head(out.embedding.detach()).squeeze(-1) if detach else out.gap  # [b]
    return F.mse_loss(gap, target)


def group_keys(examples: Sequence[Example]) -> list[tuple[str, str]]:
    """Each example's (family/arch, dataset): the unit `sne eval` scores τ over."""
    return [(e.arch, e.dataset) for e in examples]


def selection_tau(pred: np.ndarray, examples: Sequence[Example], how: str) -> float:
    """The val τ that picks a member's epoch: the mean of each group's τ (`grouped`), or one pooled τ."""
    true = np.array([e.acc for e in examples])
    return grouped_kendall_tau(pred, true, group_keys(examples)) if how == "grouped" else kendall_tau(pred, true)


def epoch_order(group_of: torch.Tensor, balance: bool, gen: torch.Generator) -> list[int]:
    """One epoch's training indices: a permutation, or (`balance`) as many draws with replacement, each group
    drawn equally often on average, so a small family is not outweighed by a large one."""
    n = group_of.numel()
    if not balance:
        return torch.randperm(n, generator=gen).tolist()
    weight = 1.0 / torch.bincount(group_of)[group_of].double()  # [n]: every group's weights sum to one
    return torch.multinomial(weight, n, replacement=True, generator=gen).tolist()


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over `warmup * total` steps, then cosine decay to 0 at `total`."""
    w = max(1, int(warmup * total))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def save_curves(histories: list[list[dict]], path: Path) -> None:
    """Training curves (loss; val τ; val prediction spread), one line per ensemble member, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    titles = ("train loss", "val Kendall τ", "val prediction std")
    for k, history in enumerate(histories):
        ep = [h["epoch"] for h in history]
        for a, key in zip(ax, ("loss", "val_kendall_tau", "val_pred_std"), strict=True):
            a.plot(ep, [h.get(key, float("nan")) for h in history], marker="o", label=f"member {k}")
    for a, title in zip(ax, titles, strict=True):
        a.set_title(title)
        a.set_xlabel("epoch")
    if len(histories) > 1:
        ax[1].legend(fontsize=7)
    ax[2].axhline(COLLAPSE_STD, color="red", lw=0.8, ls="--")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ training


def train(
    sources: Sequence[Path], out_dir: Path, opts: TrainOptions, progress: bool = True, resume: ResumeMode = "check",
) -> Predictor:
    """Train SNE on the sources' train split, select on val Kendall τ, calibrate on val, save a predictor.

    With `members > 1` in the config, each member is trained in turn from seed `opts.seed + k` with its own
    early stopping, and the predictor averages them. Raises ``LabelError``/``TrainError`` (one line each) for
    bad labels, unreadable checkpoints, too few validation checkpoints, or a resumed run with other settings
    (``resume``: check, keep, restart)."""
    t0 = time.time()
    zoo_dirs = [Path(z).resolve() for z in sources]
    opts = requested = check_resume(out_dir / "resume", opts, resume)
    cfg = get_config(opts.config).model_copy(update={
        "members": opts.members, "stats_view": opts.stats_view, "stats_encoding": opts.stats_encoding,
        "pair_stats": opts.pair_stats, "layer_count": opts.layer_count,
    })
    random.seed(opts.seed)
    tr = load_split(zoo_dirs, "train", cfg.chunk_size, opts.max_train, opts.seed, opts.on_bad_checkpoint, progress)
    va = load_split(zoo_dirs, "val", cfg.chunk_size, opts.max_eval, opts.seed, opts.on_bad_checkpoint, progress)
    train_set, val_set = tr.examples, va.examples
    if not train_set:
        raise TrainError(f"no readable train checkpoints in {', '.join(map(str, zoo_dirs))}")
    check_calibration(len(val_set), zoo_dirs)
    if any(e.gap is None for e in train_set + val_set):
        opts = replace(opts, gap_weight=0.0)  # the labels give no gap for some checkpoints: no gap head trained
    stats = torch.stack([ch.stats for e in train_set for layer in e.layers for _, ch in layer.parts])
    model = build_encoder(cfg, seed=opts.seed)  # member k initialised from seed + k
    members = [model] if isinstance(model, SNE) else model.sne_members()
    meta = {"options": asdict(requested), "unreadable": tr.bad + va.bad}  # saved with every epoch's state
    runs: list[dict] = []
    for k, member in enumerate(members):
        spent = 0.0
        for attempt in range(opts.collapse_retries + 1):
            seed = opts.seed + k + RETRY_SEED_STEP * attempt
            if attempt:  # the kept epoch was a constant: start this member again from other initial weights
                torch.manual_seed(seed)
                member.load_state_dict(SNE(cfg).state_dict())
                if progress:
                    print(f"member {k}: its best epoch predicts a constant; retraining from seed {seed}")
            member_dir = out_dir / "resume" / (f"member-{k}" if len(members) > 1 else "")
            run = fit_member(
                member, stats, train_set, val_set, replace(opts, seed=seed),
                member_dir.with_name(member_dir.name + f"-retry{attempt}") if attempt else member_dir, meta, progress,
                lambda done: save_curves([*(r["history"] for r in runs), done], out_dir / "training_curves.png"),
            )
            spent = run["seconds"] = run.get("seconds", 0.0) + spent  # over every attempt
            run.update(seed=seed, restarts=attempt)
            if not kept_collapsed(run):
                break
        runs.append(run)
    model.cpu()
    predictor = finalize(model, train_set, val_set, zoo_dirs, opts, runs, time.time() - t0)
    predictor.save(out_dir)
    return predictor


def fit_member(
    model: SNE, stats: torch.Tensor, train_set: list[Example], val_set: list[Example], opts: TrainOptions,
    resume_dir: Path, meta: dict, progress: bool, on_epoch: Callable[[list[dict]], None],
) -> dict:
    """Train one SNE in place (AdamW, warm-up + cosine, clipping, BCE + ranking, LIR, gap head), keep its
    best epoch on val τ, checkpoint every epoch to `resume_dir`; returns its history and best epoch."""
    torch.manual_seed(opts.seed)
    model.fit_stats(stats)
    model.to(opts.device)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    # what is validated and kept: the average of the weights, or the model itself
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(opts.ema)) if opts.ema > 0 else None
    judged: SNE = cast(SNE, ema.module) if ema is not None else model
    info = load_resume(resume_dir, model, opt, ema) or {"epoch": 0, "best_tau": -2.0, "history": []}
    info.update(meta)
    best = load_file(resume_dir / "best.safetensors") if (resume_dir / "best.safetensors").exists() else None
    gen = torch.Generator().manual_seed(opts.seed)
    y = torch.tensor([e.acc for e in train_set])
    g = torch.tensor([0.0 if e.gap is None else e.gap for e in train_set])
    keys = group_keys(train_set)
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    group_of = torch.tensor([ids[k] for k in keys])  # [n_train]
    steps = -(-len(train_set) // opts.batch_size)
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=opts.epochs * steps, completed=info["epoch"] * steps)
        for epoch in range(info["epoch"], opts.epochs):
            if opts.patience and epoch - info.get("best_epoch", epoch) >= opts.patience:
                bar.console.print(f"early stop: no better val τ for {opts.patience} epochs")
                break
            model.train()
            t_epoch = time.time()
            order = epoch_order(group_of, opts.balance, gen)
            losses = []
            for s in range(steps):
                idx = order[s * opts.batch_size : (s + 1) * opts.batch_size]
                batch = [train_set[i] for i in idx]
                views = [sample_chunks(hide_kinds(drop_layers(e.layers, opts.layer_drop, gen), opts.kind_drop, gen),
                                       opts.train_chunks, gen) for e in batch]
                out = model(pack(views).to(opts.device))
                target = y[idx].to(opts.device)
                loss = F.binary_cross_entropy_with_logits(out.logit, target)
                if opts.rank_weight > 0:
                    within = group_of[idx].to(opts.device) if opts.rank_pairs == "within" else None
                    loss = loss + opts.rank_weight * ranking_loss(out.logit, target, group=within)
                loss = loss + opts.gap_weight * gap_loss(model, out, g[idx].to(opts.device), opts.gap_detach)
                n_lir = round(len(batch) * opts.lir_fraction)
                if opts.lir_weight > 0 and n_lir > 0:
                    loss = loss + opts.lir_weight * lir_penalty(model, batch[:n_lir], out.logit[:n_lir], gen, opts.train_chunks)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if opts.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
                for group in opt.param_groups:
                    group["lr"] = opts.lr * lr_factor(epoch * steps + s, opts.epochs * steps, opts.warmup)
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                losses.append(loss.item())
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{opts.epochs} loss {np.mean(losses):.4f}")
            val = predict_examples(judged, val_set)
            tau = selection_tau(val["acc"], val_set, opts.select_on)
            spread = float(np.std(val["acc"]))
            info["history"].append(
                {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_kendall_tau": tau, "val_pred_std": spread}
            )
            if tau > info["best_tau"]:
                info["best_tau"], info["best_epoch"] = tau, epoch + 1
                best = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
                resume_dir.mkdir(parents=True, exist_ok=True)
                save_file(best, resume_dir / "best.safetensors")
            info["epoch"] = epoch + 1
            info["seconds"] = info.get("seconds", 0.0) + time.time() - t_epoch  # survives resumes, unlike wall time
            save_resume(resume_dir, model, opt, info, ema)
            collapsed = "  COLLAPSED to a constant" if spread < COLLAPSE_STD else ""
            bar.console.print(
                f"seed {opts.seed} epoch {epoch + 1}: loss {np.mean(losses):.4f}  val τ {tau:.4f}  "
                f"val pred std {spread:.4f}{collapsed}"
            )
            on_epoch(info["history"])
    if best is None:
        raise ValueError(f"no epoch was trained (epochs={opts.epochs}): nothing to select a model from")
    model.load_state_dict(best)
    return info


def finalize(
    model: Encoder, train_set: list[Example], val_set: list[Example], zoo_dirs: Sequence[Path], opts: TrainOptions,
    runs: list[dict], seconds: float,
) -> Predictor:
    """Calibrate (split conformal on val), build the OOD reference and write the card."""
    val = predict_examples(model, val_set)
    tr = predict_examples(model, train_set[:2000])
    true_acc = np.array([e.acc for e in val_set])
    val_tau = kendall_tau(val["acc"], true_acc)
    limits = Limits()  # the default budgets, recorded in the card
    has_gap = opts.gap_weight > 0 and all(e.gap is not None for e in train_set + val_set)
    true_gap = np.array([e.gap or 0.0 for e in val_set])  # [n_val]
    reference = tr["emb"]
    ref_residuals = tr["acc"] - np.array([e.acc for e in train_set[:2000]])  # [n_reference]: normalised intervals
    # OOD: kNN distance to the training embeddings; checked on val and on the training split itself.
    ood = ood_check(knn_score(val["emb"], reference).numpy(), knn_score(tr["emb"], reference).numpy())
    quality = quality_report(
        val["acc"], true_acc, [e.state for e in train_set], [e.acc for e in train_set], [e.state for e in val_set], opts.seed,
        group_keys(val_set),
    )
    datasets = sorted({e.dataset for e in train_set})
    archs = sorted({e.arch for e in train_set})
    name = opts.name or f"sne-{model.cfg.name}-{'+'.join(archs)}-{'+'.join(datasets)}"
    card = {
        "name": name,
        "version": f"{date.today().isoformat()}-{weights_digest(model)}",
        "trained": True,
        "created": date.today().isoformat(),
        "config": model.cfg.model_dump(),
        "predicts_gap": has_gap,
        "zoo": {"dirs": [str(Path(z).resolve()) for z in zoo_dirs], "archs": archs, "datasets": datasets,
                "families": sorted({family_of(a) for a in archs}), **_zoo_meta(zoo_dirs)},
        "splits": {"by": "run", "train": len(train_set), "val": len(val_set)},
        "unreadable_checkpoints": runs[0].get("unreadable", []),
        "lir": {"weight": opts.lir_weight, **lir_coverage(train_set)},
        "quality": quality,
        "warnings": quality["warnings"] + [
            f"member {k} (seed {r.get('seed')}) still predicts a constant after {r.get('restarts', 0)} retries"
            for k, r in enumerate(runs) if kept_collapsed(r)
        ],
        "training": {
            **asdict(opts), "seconds": round(seconds, 1),  # this invocation: loading, any training, calibration
            "epoch_seconds": [round(r.get("seconds", 0.0), 1) for r in runs],  # per member, over every invocation
            "val_kendall_tau": val_tau,
            "best_epoch": [r.get("best_epoch") for r in runs], "member_val_kendall_tau": [r.get("best_tau") for r in runs],
            "member_seeds": [r.get("seed") for r in runs], "collapse_restarts": [r.get("restarts", 0) for r in runs],
            "history": [r.get("history", []) for r in runs],
        },
        "metrics": {"val": {
            "kendall_tau": val_tau, "pooled_kendall_tau": quality["kendall_tau"]["pooled"],
            "grouped_kendall_tau": quality["grouped_kendall_tau"]["sne"],
            **({"gap_kendall_tau": kendall_tau(val["gap"], true_gap)} if has_gap else {}),
        }},
        "conformal": conformal_section(val, val_set, reference, ref_residuals, has_gap),  # val predicted once
        "budgets": {"layer_chunk_budget": limits.layer_chunk_budget,
                    "checkpoint_chunk_budget": limits.checkpoint_chunk_budget, "train_chunks_per_part": opts.train_chunks},
        "ood": {"method": f"mean distance to the {OOD_K} nearest training embeddings, or an unseen architecture",
                "k": OOD_K, "quantile": 0.99, "n_reference": int(reference.shape[0]), **ood,
                "architectures": [a.model_dump() for a in seen_architectures(signature(e.layers) for e in train_set)]},
    }
    return Predictor(model, card, reference, torch.from_numpy(ref_residuals).float())


def _zoo_meta(zoo_dirs: Sequence[Path]) -> dict:
    meta = {}
    for z in zoo_dirs:
        p = Path(z) / "zoo.json"
        if p.exists():
            m = json.loads(p.read_text())
            meta[Path(z).name] = {k: m[k] for k in ("arch", "dataset", "n_runs", "seed") if k in m}
    return {"zoos": meta}
