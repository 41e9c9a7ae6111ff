"""`sne train`: train SNE on one or more zoos and save a calibrated predictor."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console


def train_command(
    zoo_dirs: Annotated[list[Path], typer.Option("--zoo", help="Zoo directory to train on (repeatable).")],
    out: Annotated[Path, typer.Option(help="Predictor output directory (model.safetensors, card.json, ...).")],
    config: Annotated[str, typer.Option(help="Encoder size: small (2 CPU cores) or paper (Table 7; GPU).")] = "small",
    epochs: Annotated[int, typer.Option()] = 12,
    batch_size: Annotated[int, typer.Option(
        help="Checkpoints per step (small batches: more steps per CPU minute).",
    )] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate (x0.3 at 60 % and 85 % of the epochs).")] = 1e-3,
    clip_grad: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).")] = 0.0,
    lir_weight: Annotated[float, typer.Option(help="Logit Invariance Regularization weight (0 = off).")] = 1.0,
    lir_fraction: Annotated[float, typer.Option(
        help="Share of each batch also encoded with permuted hidden units.",
    )] = 0.25,
    max_train: Annotated[int | None, typer.Option(help="Subsample the train split to this many checkpoints.")] = None,
    max_eval: Annotated[int | None, typer.Option(help="Subsample the val split (selection + calibration).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    name: Annotated[str | None, typer.Option(help="Predictor name in its card.")] = None,
) -> None:
    """Train SNE (BCE on test accuracy, Adam, LIR) and save a calibrated predictor; resumes if interrupted."""
    import torch
    from model.training import TrainOptions, train

    torch.set_num_threads(threads)
    opts = TrainOptions(config=config, epochs=epochs, batch_size=batch_size, lr=lr, lir_weight=lir_weight,
                        lir_fraction=lir_fraction, clip_grad=clip_grad, max_train=max_train, max_eval=max_eval, seed=seed,
                        device=device, name=name)
    pred = train(zoo_dirs, out, opts)
    console.print(f"saved {pred.name} {pred.version} to {out} (val τ {pred.card.metrics.val['kendall_tau']:.3f})")
