"""`sne eval`: score trained predictors against the statistics baselines on held-out zoo splits."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console


def eval_command(
    predictors: Annotated[list[Path], typer.Option("--predictor", help="Trained predictor directory (repeatable).")],
    zoo_dirs: Annotated[list[Path], typer.Option("--zoo", help="Zoo whose test split is scored (repeatable).")],
    out: Annotated[Path, typer.Option(help="Where results.json, results.md and the PNG plots go.")] = Path("eval"),
    unregularized: Annotated[Path | None, typer.Option(
        help="A predictor trained without LIR, for the invariance comparison.",
    )] = None,
    max_test: Annotated[int | None, typer.Option(help="Subsample each test split.")] = None,
    update_card: Annotated[bool, typer.Option(help="Write the metrics into the first predictor's card.")] = False,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Kendall τ of SNE vs STATNN vs MLP: in-distribution, cross-dataset, cross-architecture."""
    import torch
    from model.evaluation import evaluate
    from model.evaluation import update_card as write_card

    torch.set_num_threads(threads)
    results = evaluate(predictors, zoo_dirs, out, unregularized=unregularized, max_test=max_test)
    console.print((out / "results.md").read_text())
    if update_card:
        write_card(predictors[0], results)
        console.print(f"metrics written to {predictors[0] / 'card.json'}")
