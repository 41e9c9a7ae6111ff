"""`sne inspect`: the layer table SNE sees in one checkpoint, from its header alone (no tensor is read).

Same admission as the service (`model.admission.admit` under the `SNE_*` limits) and the predictor's chunk
size, so the counts, the depth order and any refusal are what an upload would get.
"""
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
    chunks_sampled: int


def inspect_command(
    file: Annotated[Path, typer.Argument(help="A .safetensors checkpoint.")],
    chunk_size: Annotated[int | None, typer.Option(
        min=1, help="Chunk size c used to count chunks (default: the predictor's, as the service uses).",
    )] = None,
    predictor: Annotated[Path | None, typer.Option(
        envvar="SNE_PREDICTOR_PATH", help="Predictor whose chunk size is used (default: the shipped one).",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the layers in depth order: type, shape, parameters, chunks and how many the budget keeps."""
    from rich.table import Table

    from app.settings import Settings
    from model.admission import admit
    from model.checkpoint import read_header
    from model.errors import CheckpointError
    from model.layers import connected_pairs
    from model.predictor import Predictor

    limits = Settings().limits()
    try:
        header = read_header(file, limits)  # a bad file fails first, whatever the predictor
    except CheckpointError as e:
        fail(f"{file}: {e} [{e.reason}]")
    if chunk_size is None:
        try:
            chunk_size = Predictor.load(predictor).config.chunk_size
        except (OSError, ValueError) as e:
            fail(f"cannot load the predictor for its chunk size ({' '.join(str(e).split())[:300]}); pass --chunk-size")
    c = chunk_size
    try:
        plan = admit(header, limits, c)
    except CheckpointError as e:
        fail(f"{file}: {e} [{e.reason}]")
    rows: list[LayerRow] = []
    for lp in plan.layers:
        bias = next((p.shape for p in lp.spec.parts[1:] if p.role == "bias"), None)
        rows.append({
            "name": lp.spec.name, "type": lp.spec.kind.value, "level": lp.spec.level, "shape": lp.spec.shape,
            "bias": list(bias) if bias is not None else None, "parameters": lp.spec.n_params,
            "chunks": lp.total, "chunks_sampled": lp.keep,
        })
    ok, pairs = connected_pairs([lp.spec for lp in plan.layers])
    skipped = [{"name": s.name, "dtype": s.dtype, "shape": s.shape, "reason": s.reason} for s in plan.skipped]
    if as_json:
        print(json.dumps({
            "file": str(file), "chunk_size": c, "parameters": plan.n_params, "chunks": plan.total_chunks,
            "chunks_sampled": plan.kept_chunks, "connected": {"pairs": pairs, "connected": ok},
            "layers": rows, "skipped": skipped,
        }, indent=2))
        return
    table = Table(title=f"{file}  ({plan.n_params:,} parameters, {len(rows)} layers in depth order, chunk size {c})")
    for col in ("level", "name", "type", "shape", "bias", "parameters", "chunks", "sampled"):
        numeric = col in ("level", "parameters", "chunks", "sampled")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["level"]), r["name"], r["type"], "×".join(map(str, r["shape"])) or "scalar",
            "×".join(map(str, r["bias"])) if r["bias"] else "-", f"{r['parameters']:,}", f"{r['chunks']:,}",
            f"{r['chunks_sampled']:,}",
        )
    console.print(table)
    console.print(
        f"chunks encoded: {plan.kept_chunks:,} of {plan.total_chunks:,} (budgets: SNE_LAYER_CHUNK_BUDGET="
        f"{limits.layer_chunk_budget:,}, SNE_CHECKPOINT_CHUNK_BUDGET={limits.checkpoint_chunk_budget:,}); "
        f"shapes connect in depth order for {ok} of {pairs} consecutive linear/conv pairs"
    )
    for s in skipped:
        console.print(f"[dim]skipped {s['name']} ({s['dtype']} {s['shape']}): {s['reason']}[/]")
