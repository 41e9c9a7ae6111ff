"""`sne zoo`: generate a model zoo offline (the training data of a predictor)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console


def zoo_command(
    out: Annotated[Path, typer.Option(help="Output directory (checkpoints/, index.csv, zoo.json).")],
    arch: Annotated[str, typer.Option(help="Architecture: arch1 or arch2 (paper Tables 3-5).")] = "arch1",
    dataset: Annotated[str, typer.Option(help="Dataset: digits (scikit-learn) or shapes (procedural).")] = "digits",
    runs: Annotated[int, typer.Option(help="Training runs (each saves several epochs).")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed for hyperparameters, initialisation and the split.")] = 0,
    group_size: Annotated[int, typer.Option(help="Models trained at once as one batched group.")] = 100,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Generate a model zoo offline (resumable: re-running skips finished runs)."""
    import torch

    from model.zoo import generate_zoo

    torch.set_num_threads(threads)
    summary = generate_zoo(out, arch=arch, dataset=dataset, n_runs=runs, seed=seed, group_size=group_size)
    console.print(summary)
