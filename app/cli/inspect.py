"""`sne inspect`: the layer table SNE sees in one checkpoint, without encoding it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, TypedDict

import typer

from app.cli.common import console, fail


class LayerRow(TypedDict):
    """One row of the table (and of `--json`'s `layers`)."""

    name: str
    type: str
    level: int
    shape: list[int]
    bias: list[int] | None
    parameters: int
    chunks: int


def inspect_command(
    file: Annotated[Path, typer.Argument(help="A .safetensors checkpoint.")],
    chunk_size: Annotated[int, typer.Option(help="Chunk size c used to count chunks (the paper's default is 32).")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the layer table SNE sees: name, type, level, shape, parameters, chunks."""
    from rich.table import Table

    from model.checkpoint import load_checkpoint
    from model.chunking import expected_chunks
    from model.errors import CheckpointError

    try:
        ckpt = load_checkpoint(file)
    except CheckpointError as e:
        fail(f"{file}: {e} [{e.reason}]")
    rows: list[LayerRow] = [
        {
            "name": layer.name,
            "type": layer.kind.value,
            "level": layer.level,
            "shape": layer.shape,
            "bias": list(layer.bias.shape) if layer.bias is not None and layer.weight is not None else None,
            "parameters": layer.n_params,
            "chunks": expected_chunks(layer, chunk_size),
        }
        for layer in ckpt.layers
    ]
    skipped = [{"name": s.name, "dtype": s.dtype, "shape": s.shape, "reason": s.reason} for s in ckpt.skipped]
    if as_json:
        print(json.dumps({"file": str(file), "layers": rows, "skipped": skipped, "parameters": ckpt.n_params}, indent=2))
        return
    table = Table(title=f"{file}  ({ckpt.n_params:,} parameters, {len(rows)} layers, chunk size {chunk_size})")
    for col in ("level", "name", "type", "shape", "bias", "parameters", "chunks"):
        table.add_column(col, justify="right" if col in ("level", "parameters", "chunks") else "left")
    for r in rows:
        table.add_row(
            str(r["level"]), r["name"], r["type"], "×".join(map(str, r["shape"])) or "scalar",
            "×".join(map(str, r["bias"])) if r["bias"] else "-", f"{r['parameters']:,}", f"{r['chunks']:,}",
        )
    console.print(table)
    for s in skipped:
        console.print(f"[dim]skipped {s['name']} ({s['dtype']} {s['shape']}): {s['reason']}[/]")
