"""`sne encode`: predicted accuracy and embedding of checkpoints, in-process (no service needed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console, err, fail


def encode_command(
    files: Annotated[list[Path], typer.Argument(help="One or more .safetensors checkpoints.")],
    predictor: Annotated[Path | None, typer.Option(
        envvar="SNE_PREDICTOR_PATH", help="Predictor directory (default: the shipped one).",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with embeddings) instead of a table.")] = False,
) -> None:
    """Encode checkpoints in-process (one packed forward) and print predicted accuracy and embedding size."""
    from rich.table import Table

    from model.checkpoint import load_checkpoint
    from model.errors import CheckpointError
    from model.predictor import Predictor

    ckpts = []
    for f in files:
        try:
            ckpts.append(load_checkpoint(f))
        except CheckpointError as e:
            fail(f"{f}: {e} [{e.reason}]")
    pred = Predictor.load(predictor)
    results = pred.predict(ckpts)
    if not pred.trained:
        err.print(f"[yellow]warning:[/] {pred.card.get('note', 'untrained predictor')}")
    if as_json:
        out = [
            {
                "file": str(f), "predictor": {"name": pred.name, "version": pred.version, "trained": pred.trained},
                "predicted_accuracy": r.accuracy, "predicted_gap": r.gap,
                "interval": {"low": r.low, "high": r.high, "coverage": r.coverage},
                "ood": {"score": r.ood_score, "flag": r.ood_flag}, "embedding": r.embedding,
            }
            for f, r in zip(files, results)
        ]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
        return
    table = Table(title=f"predictor {pred.name} {pred.version}")
    for col in ("file", "accuracy", "interval", "gap", "ood score", "ood", "embedding"):
        table.add_column(col)
    for f, r in zip(files, results):
        table.add_row(
            str(f), f"{r.accuracy:.3f}", f"[{r.low:.3f}, {r.high:.3f}]", "-" if r.gap is None else f"{r.gap:.3f}",
            "-" if r.ood_score is None else f"{r.ood_score:.3f}", "OOD" if r.ood_flag else "ok", f"{len(r.embedding)} floats",
        )
    console.print(table)
