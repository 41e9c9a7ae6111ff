"""`sne eval`: score trained predictors against the statistics baselines on held-out test splits."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import (
    OnBad,
    OnBadCheckpoint,
    Threads,
    console,
    existing_dir,
    existing_dirs,
    existing_files,
    labelled_sources,
)


def eval_command(
    predictors: Annotated[list[Path], typer.Option(
        "--predictor", callback=existing_dirs, help="Trained predictor directory (repeatable).",
    )],
    labels: Annotated[list[Path] | None, typer.Option(
        "--labels", callback=existing_files, help="Labels CSV whose test split is scored (repeatable).",
    )] = None,
    zoo_dirs: Annotated[list[Path] | None, typer.Option(
        "--zoo", callback=existing_dirs, help="Zoo whose test split is scored (repeatable).",
    )] = None,
    out: Annotated[Path, typer.Option(help="Where results.json, results.md and the PNG plots go.")] = Path("eval"),
    unregularized: Annotated[Path | None, typer.Option(
        callback=existing_dir, help="A predictor trained without LIR, for the invariance comparison.",
    )] = None,
    max_test: Annotated[int | None, typer.Option(min=1, help="Subsample each test split.")] = None,
    update_card: Annotated[bool, typer.Option(help="Write the metrics into the first predictor's card.")] = False,
    threads: Threads = 2,
    chunks_only: Annotated[Path | None, typer.Option(
        callback=existing_dir, help="The chunks-only SNE of the first predictor's setup, for the ablation column.",
    )] = None,
    stats_only: Annotated[Path | None, typer.Option(
        callback=existing_dir, help="The statistics-only SNE of the first predictor's setup, for the ablation column.",
    )] = None,
    n_boot: Annotated[int, typer.Option(min=10, help="Bootstrap replicates for the 95 % intervals on tau.")] = 1000,
    on_bad_checkpoint: OnBadCheckpoint = OnBad.fail,
) -> None:
    """Kendall τ of SNE vs the pooled-statistics GBM, STATNN and MLP: in-distribution, cross-dataset, cross-architecture."""
    sources = labelled_sources(labels, zoo_dirs)
    import torch

    from model.evaluation import evaluate
    from model.evaluation import update_card as write_card

    torch.set_num_threads(threads)
    results = evaluate(predictors, sources, out, unregularized=unregularized, max_test=max_test,
                       on_bad=on_bad_checkpoint.value, chunks_only=chunks_only, stats_only=stats_only,
                       n_boot=n_boot)
    console.print((out / "results.md").read_text())
    if update_card:
        write_card(predictors[0], results)
        console.print(f"metrics written to {predictors[0] / 'card.json'}")
