"""`sne zoo`: generate a model zoo offline (the training data of a predictor)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console


def _arch(value: str) -> str:
    """Callback: a zoo architecture or family (checked when the command runs, not at import)."""
    from model.zoo.archs import ARCHS
    from model.zoo.families import FAMILIES

    known = [*ARCHS, *FAMILIES]
    if value.lower() not in known:
        raise typer.BadParameter(f"{value!r} is not a zoo architecture; choose from {', '.join(known)}")
    return value.lower()


def zoo_command(
    out: Annotated[Path, typer.Option(help="Output directory (checkpoints/, index.csv, labels.csv, zoo.json).")],
    arch: Annotated[str, typer.Option(
        callback=_arch,
        help="Architecture: arch1 or arch2 (paper Tables 3-5), or a family with sampled depth/width: "
        "mlp, resnet (BatchNorm, residual blocks) or transformer (token sequences)."
    )] = "arch1",
    dataset: Annotated[str | None, typer.Option(
        help="Dataset: digits (scikit-learn) or shapes (procedural); sequences for transformer. Default: "
        "digits, sequences for transformer."
    )] = None,
    runs: Annotated[int, typer.Option(min=1, help="Training runs (each saves several epochs).")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed for hyperparameters, initialisation and the split.")] = 0,
    group_size: Annotated[int, typer.Option(min=1, help="Models trained at once as one batched group.")] = 100,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 2,
) -> None:
    """Generate a model zoo offline (resumable: re-running skips finished runs)."""
    import torch
    from rich.table import Table

    from model.labels import write_zoo_labels
    from model.zoo import generate_zoo
    from model.zoo.families import FAMILIES
    from model.zoo.family_zoo import generate_family_zoo

    torch.set_num_threads(threads)
    if arch.lower() in FAMILIES:
        summary = generate_family_zoo(out, arch.lower(), dataset, n_runs=runs, seed=seed, group_size=group_size)
    else:
        summary = generate_zoo(
            out, arch=arch, dataset=dataset or "digits", n_runs=runs, seed=seed, group_size=group_size
        )
    labels = write_zoo_labels(out)
    table = Table(title=f"zoo {summary.arch}/{summary.dataset} in {summary.out_dir}")
    for col in ("runs", "trained now", "skipped (done)", "checkpoints", "diverged", "train/val/test runs", "minutes",
                "runs/min"):
        table.add_column(col, justify="right")
    split = summary.split_runs
    table.add_row(
        str(summary.n_runs), str(summary.runs_trained), str(summary.runs_skipped), str(summary.n_checkpoints),
        str(summary.n_diverged), f"{split.get('train', 0)}/{split.get('val', 0)}/{split.get('test', 0)}",
        f"{summary.wall_seconds / 60:.1f}", f"{summary.runs_per_minute:.1f}",
    )
    console.print(table)
    console.print(f"labels: {labels} (the format `sne train --labels` reads)")
