"""`sne train`: fit SNE to a zoo's test accuracies (binary cross-entropy, Adam, paper §3.7).

Adds the v2 paper's Logit Invariance Regularization (``model.training.lir``) and a second head for the
generalization gap. Each epoch is checkpointed (``model.training.resume``), so an interrupted run resumes;
``finalize`` calibrates the chosen model and writes its card.
"""
from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from model.config import get_config
from model.evaluation.metrics import conformal_quantiles, kendall_tau
from model.packing import pack
from model.predictor import OOD_K, Predictor, knn_score, weights_digest
from model.sne import SNE
from model.training.examples import Example, load_examples, predict_examples
from model.training.lir import lir_penalty
from model.training.resume import load_resume, save_resume


@dataclass
class TrainOptions:
    """What `sne train` takes; stored in the card so a predictor says how it was trained."""

    config: str = "small"
    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-3
    clip_grad: float = 0.0  # max gradient norm (0 = off)
    lir_weight: float = 1.0  # 0 turns Logit Invariance Regularization off
    lir_fraction: float = 0.25  # share of each batch that is also encoded permuted
    gap_weight: float = 1.0
    max_train: int | None = None  # subsample the train split (CPU budgets)
    max_eval: int | None = None  # subsample the val split used for model selection and calibration
    seed: int = 0
    device: str = "cpu"
    name: str | None = None


# ------------------------------------------------------------------------------------------ training


def train(zoo_dirs: Sequence[Path], out_dir: Path, opts: TrainOptions, progress: bool = True) -> Predictor:
    """Train SNE on the zoos' train split, select on val Kendall τ, calibrate on val, save a predictor."""
    t0 = time.time()
    cfg = get_config(opts.config)
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)
    zoo_dirs = [Path(z) for z in zoo_dirs]
    train_set = load_examples(zoo_dirs, "train", cfg.chunk_size, opts.max_train, opts.seed)
    val_set = load_examples(zoo_dirs, "val", cfg.chunk_size, opts.max_eval, opts.seed)
    if not train_set or not val_set:
        raise ValueError(f"zoos {zoo_dirs} have no train or no val checkpoints")
    model = SNE(cfg).to(opts.device)
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(opts.epochs * 0.6), int(opts.epochs * 0.85)], 0.3)
    resume_dir = out_dir / "resume"
    info = load_resume(resume_dir, model, opt) or {"epoch": 0, "best_tau": -2.0, "history": []}
    with warnings.catch_warnings():  # replaying the schedule of finished epochs, before any optimizer step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(info["epoch"]):
            sched.step()
    best = load_file(resume_dir / "best.safetensors") if (resume_dir / "best.safetensors").exists() else None
    gen = torch.Generator().manual_seed(opts.seed)
    y = torch.tensor([e.acc for e in train_set])
    g = torch.tensor([e.gap for e in train_set])
    steps = -(-len(train_set) // opts.batch_size)
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=opts.epochs * steps, completed=info["epoch"] * steps)
        for epoch in range(info["epoch"], opts.epochs):
            model.train()
            order = torch.randperm(len(train_set), generator=gen).tolist()
            losses = []
            for s in range(steps):
                idx = order[s * opts.batch_size : (s + 1) * opts.batch_size]
                batch = [train_set[i] for i in idx]
                out = model(pack([e.layers for e in batch]).to(opts.device))
                loss = F.binary_cross_entropy_with_logits(out.logit, y[idx].to(opts.device))
                loss = loss + opts.gap_weight * F.mse_loss(out.gap, g[idx].to(opts.device))
                n_lir = round(len(batch) * opts.lir_fraction)
                if opts.lir_weight > 0 and n_lir > 0:
                    loss = loss + opts.lir_weight * lir_penalty(model, batch[:n_lir], out.logit[:n_lir], gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if opts.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
                opt.step()
                losses.append(loss.item())
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{opts.epochs} loss {np.mean(losses):.4f}")
            sched.step()
            val = predict_examples(model, val_set)
            tau = kendall_tau(val["acc"], np.array([e.acc for e in val_set]))
            info["history"].append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_kendall_tau": tau})
            if tau > info["best_tau"]:
                info["best_tau"], info["best_epoch"] = tau, epoch + 1
                best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                resume_dir.mkdir(parents=True, exist_ok=True)
                save_file(best, resume_dir / "best.safetensors")
            info["epoch"] = epoch + 1
            save_resume(resume_dir, model, opt, info)
            bar.console.print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}  val τ {tau:.4f}")
    if best is None:
        raise ValueError(f"no epoch was trained (epochs={opts.epochs}): nothing to select a model from")
    model.load_state_dict(best)
    predictor = finalize(model.cpu(), train_set, val_set, zoo_dirs, opts, info, time.time() - t0)
    predictor.save(out_dir)
    return predictor


def finalize(
    model: SNE, train_set: list[Example], val_set: list[Example], zoo_dirs: Sequence[Path], opts: TrainOptions,
    info: dict, seconds: float,
) -> Predictor:
    """Calibrate (split conformal on val), build the OOD reference and write the card."""
    val = predict_examples(model, val_set)
    tr = predict_examples(model, train_set[:2000])
    true_acc = np.array([e.acc for e in val_set])
    true_gap = np.array([e.gap for e in val_set])
    reference = tr["emb"]
    # OOD: kNN distance of val embeddings to the training zoo; the flag fires beyond its 99th percentile.
    val_scores = knn_score(val["emb"], reference).numpy()
    datasets = sorted({e.dataset for e in train_set})
    archs = sorted({e.arch for e in train_set})
    name = opts.name or f"sne-{model.cfg.name}-{'+'.join(archs)}-{'+'.join(datasets)}"
    card = {
        "name": name,
        "version": f"{date.today().isoformat()}-{weights_digest(model)}",
        "trained": True,
        "created": date.today().isoformat(),
        "config": model.cfg.model_dump(),
        "predicts_gap": True,
        "zoo": {"dirs": [str(z) for z in zoo_dirs], "archs": archs, "datasets": datasets, **_zoo_meta(zoo_dirs)},
        "splits": {"by": "run_id", "train": len(train_set), "val": len(val_set)},
        "training": {
            **asdict(opts), "seconds": round(seconds, 1), "best_epoch": info.get("best_epoch"),
            "val_kendall_tau": info.get("best_tau"), "history": info.get("history", []),
        },
        "metrics": {"val": {"kendall_tau": kendall_tau(val["acc"], true_acc), "gap_kendall_tau": kendall_tau(val["gap"], true_gap)}},
        "conformal": {
            "method": "split conformal, absolute residuals on the val split",
            "n_calibration": len(val_set),
            "accuracy": conformal_quantiles(np.abs(val["acc"] - true_acc)),
            "gap": conformal_quantiles(np.abs(val["gap"] - true_gap)),
        },
        "ood": {"method": f"mean distance to the {OOD_K} nearest training embeddings", "k": OOD_K,
                "threshold": float(np.quantile(val_scores, 0.99)), "quantile": 0.99, "n_reference": int(reference.shape[0])},
    }
    return Predictor(model, card, reference)


def _zoo_meta(zoo_dirs: Sequence[Path]) -> dict:
    meta = {}
    for z in zoo_dirs:
        p = Path(z) / "zoo.json"
        if p.exists():
            m = json.loads(p.read_text())
            meta[Path(z).name] = {k: m[k] for k in ("arch", "dataset", "n_runs", "seed") if k in m}
    return {"zoos": meta}
