"""`sne train`: train SNE on labelled checkpoints (a labels CSV, or zoos) and save a calibrated predictor."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import (
    Device,
    OnBad,
    StatsEncoding,
    StatsView,
    Threads,
    config_name,
    console,
    err,
    existing_dirs,
    existing_files,
    labelled_sources,
)


class RankPairs(str, Enum):
    """Which pairs of a batch the ranking loss orders."""

    within = "within"
    all = "all"


class SelectOn(str, Enum):
    """Which val τ picks each member's epoch."""

    grouped = "grouped"
    pooled = "pooled"


def train_command(
    out: Annotated[Path, typer.Option(help="Predictor output directory (model.safetensors, card.json, ...).")],
    labels: Annotated[list[Path] | None, typer.Option(
        "--labels", callback=existing_files,
        help="Labels CSV: one row per checkpoint, columns path, accuracy (+ run, split, family, dataset, gap); "
        "paths relative to the file. Repeatable. See README, Bring your own checkpoints.",
    )] = None,
    zoo_dirs: Annotated[list[Path] | None, typer.Option(
        "--zoo", callback=existing_dirs, help="Zoo directory made by `sne zoo` (repeatable).",
    )] = None,
    config: Annotated[str, typer.Option(
        callback=config_name, help="Encoder size: tiny, small (2 CPU cores), medium (a GPU; the build script's choice there) or paper "
        "(Table 7); -stats / -chunks variants for the ablation.",
    )] = "small",
    stats_view: Annotated[StatsView, typer.Option(
        help="raw statistics, or relative: with each part's shape divided out (for other layer shapes than trained on).",
    )] = StatsView.raw,
    stats_encoding: Annotated[StatsEncoding, typer.Option(
        help="standard: statistics standardised by the training set's mean/std; ple: piecewise-linear codes over its "
        "quantile bins.",
    )] = StatsEncoding.standard,
    pair_stats: Annotated[bool, typer.Option(
        "--pair-stats/--no-pair-stats",
        help="Also read how each layer's weight lines up with the previous one (model.pairs: Gram alignment).",
    )] = False,
    layer_count: Annotated[bool, typer.Option(
        "--layer-count/--no-layer-count",
        help="Also give the network embedding the log of the layer count (its pooling alone cannot count layers).",
    )] = False,
    members: Annotated[int, typer.Option(
        min=1, help="Train this many SNEs from seeds seed..seed+members-1 and average them (an ensemble).",
    )] = 1,
    collapse_retries: Annotated[int, typer.Option(
        min=0, help="Retrain a member whose kept epoch predicts a constant, from seed + 1000 (then + 2000, ...).",
    )] = 2,
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    batch_size: Annotated[int, typer.Option(min=1, help="Checkpoints per step.")] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate (linear warm-up, cosine decay).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")] = 0.01,
    warmup: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of the steps spent warming up.")] = 0.05,
    clip_grad: Annotated[float, typer.Option(min=0.0, help="Clip the gradient norm to this (0 = off).")] = 1.0,
    rank_weight: Annotated[float, typer.Option(min=0.0, help="Pairwise ranking loss weight beside BCE (0 = off).")] = 1.0,
    rank_pairs: Annotated[RankPairs, typer.Option(
        help="all: the ranking loss orders every pair of the batch; within: only checkpoints of one family and "
        "dataset (tau is scored per zoo). The same for one zoo.",
    )] = RankPairs.all,
    select_on: Annotated[SelectOn, typer.Option(
        help="pooled: keep the epoch with the best tau over every val checkpoint; grouped: the best mean of each "
        "family/dataset's val tau. The same for one zoo.",
    )] = SelectOn.pooled,
    balance: Annotated[bool, typer.Option(
        "--balance", help="Draw each epoch's checkpoints so every family/dataset weighs the same (with replacement).",
    )] = False,
    patience: Annotated[int, typer.Option(
        min=0, help="Stop after this many epochs without a better val tau (0 = never).",
    )] = 0,
    train_chunks: Annotated[int, typer.Option(
        min=0, help="Chunks per part sampled in each training step (0 = all).",
    )] = 64,
    lir_weight: Annotated[float, typer.Option(min=0.0, help="Logit Invariance Regularization weight (0 = off).")] = 1.0,
    gap_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the train-test gap head's loss (0 = off).")] = 1.0,
    gap_detach: Annotated[bool, typer.Option(
        "--gap-detach", help="Train the gap head on a detached embedding: the gap target does not shape the encoder.",
    )] = False,
    layer_drop: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Chance each middle depth level is left out of a training step (depth augmentation).",
    )] = 0.0,
    kind_drop: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Chance each layer's kind is shown as 'other' in a training step (type augmentation).",
    )] = 0.0,
    ema: Annotated[float, typer.Option(
        min=0.0, max=0.9999, help="Validate and keep an exponential moving average of the weights with this decay "
        "per step (0 = off; e.g. 0.9 averages over about ten steps).",
    )] = 0.0,
    lir_fraction: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of each batch also encoded with permuted hidden units.",
    )] = 0.25,
    max_train: Annotated[int | None, typer.Option(min=1, help="Subsample the train split to this many checkpoints.")] = None,
    max_eval: Annotated[int | None, typer.Option(min=1, help="Subsample the val split (selection + calibration).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[Device, typer.Option(help="cpu or cuda.")] = Device.cpu,
    threads: Threads = 2,
    name: Annotated[str | None, typer.Option(help="Predictor name in its card.")] = None,
    on_bad_checkpoint: Annotated[OnBad, typer.Option(
        help="A checkpoint that cannot be read: fail (list them) or skip (counted in the card).",
    )] = OnBad.fail,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out with the settings it was started with.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard the run in --out and start over.")] = False,
) -> None:
    """Train SNE (BCE + ranking on test accuracy, AdamW, LIR) and save a calibrated predictor; resumes if interrupted."""
    sources = labelled_sources(labels, zoo_dirs)
    if resume and restart:
        raise typer.BadParameter("--resume keeps the old run, --restart discards it: give one", param_hint="'--resume'")
    import torch
    from rich.table import Table

    from model.training import TrainOptions, train

    torch.set_num_threads(threads)
    opts = TrainOptions(config=config, stats_view=stats_view.value, stats_encoding=stats_encoding.value, pair_stats=pair_stats, layer_count=layer_count, members=members, collapse_retries=collapse_retries, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup=warmup, rank_weight=rank_weight, rank_pairs=rank_pairs.value,
                        select_on=select_on.value, balance=balance, patience=patience, train_chunks=train_chunks,
                        lir_weight=lir_weight, gap_weight=gap_weight, gap_detach=gap_detach, layer_drop=layer_drop, kind_drop=kind_drop, ema=ema,
                        lir_fraction=lir_fraction, clip_grad=clip_grad, max_train=max_train, max_eval=max_eval, seed=seed,
                        device=device.value, name=name, on_bad_checkpoint=on_bad_checkpoint.value)
    pred = train(sources, out, opts, resume="keep" if resume else "restart" if restart else "check")
    card = pred.card.model_dump()
    table = Table(title=f"{pred.name} {pred.version}  ->  {out}")
    for col in ("train", "val", "SNE val τ", "pooled GBM val τ", "LIR permutable", "unreadable", "OOD flags on train"):
        table.add_column(col, justify="right")
    quality, lir, ood = card.get("quality", {}), card.get("lir", {}), card.get("ood", {})
    tau = quality.get("grouped_kendall_tau", quality["kendall_tau"])  # per family/dataset, averaged
    table.add_row(
        str(card["splits"]["train"]), str(card["splits"]["val"]), f"{tau['sne']:.3f}",
        f"{tau['pooled']:.3f}", f"{lir.get('permutable', 0)} of {card['splits']['train']}",
        str(len(card.get("unreadable_checkpoints", []))), f"{ood.get('train_flag_rate', 0):.1%}",
    )
    console.print(table)
    if len(card["zoo"]["archs"]) * len(card["zoo"]["datasets"]) > 1:
        console.print("val τ: the mean of each family/dataset's τ (pooled over every val checkpoint: "
                      f"SNE {quality['kendall_tau']['sne']:.3f}, GBM {quality['kendall_tau']['pooled']:.3f})")
    for reason, n in lir.get("reasons", {}).items():
        err.print(f"[yellow]LIR skipped {n} checkpoint(s):[/] {reason}", soft_wrap=True)
    for w in card.get("warnings", []):
        err.print(f"[bold yellow]WARNING:[/] {w}", soft_wrap=True)
    console.print(f"saved {pred.name} {pred.version} to {out} (val τ {tau['sne']:.3f})", soft_wrap=True)
