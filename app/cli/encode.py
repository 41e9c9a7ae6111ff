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

    from app.local import encode_parsed, parse_file
    from model.errors import CheckpointError
    from model.predictor import Predictor

    pred = Predictor.load(predictor)
    parsed = []
    for f in files:
        try:
            parsed.append(parse_file(f, pred))
        except CheckpointError as e:
            fail(f"{f}: {e} [{e.reason}]")
    results = encode_parsed(parsed, pred)
    if not pred.trained:
        err.print(f"[yellow]warning:[/] {pred.card.note or 'untrained predictor'}")
    if as_json:
        out = [{"file": str(f), **r.model_dump(mode="json", exclude_unset=True)} for f, r in zip(files, results)]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
        return
    table = Table(title=f"predictor {pred.name} {pred.version}")
    for col in ("file", "accuracy", "interval", "gap", "ood score", "ood", "embedding"):
        table.add_column(col)
    for f, r in zip(files, results):
        table.add_row(
            str(f), f"{r.predicted_accuracy:.3f}", f"[{r.interval.low:.3f}, {r.interval.high:.3f}]",
            "-" if r.predicted_gap is None else f"{r.predicted_gap:.3f}",
            "-" if r.ood.score is None else f"{r.ood.score:.3f}", "OOD" if r.ood.flag else "ok",
            f"{len(r.embedding)} floats",
        )
    console.print(table)
