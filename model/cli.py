"""The `sne` command line: inspect, zoo, train, eval, encode, serve, gate."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SNE: encode neural-network checkpoints and predict their accuracy.")
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A .safetensors checkpoint."),
    chunk_size: int = typer.Option(32, help="Chunk size c used to count chunks (the paper's default is 32)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the layer table SNE sees: name, type, level, shape, parameters, chunks."""
    from model.checkpoint import load_checkpoint
    from model.chunking import expected_chunks
    from model.errors import CheckpointError

    try:
        ckpt = load_checkpoint(file)
    except CheckpointError as e:
        _fail(f"{file}: {e} [{e.reason}]")
    rows = []
    for layer in ckpt.layers:
        chunks = expected_chunks(layer, chunk_size)
        rows.append(
            {
                "name": layer.name,
                "type": layer.kind.value,
                "level": layer.level,
                "shape": layer.shape,
                "bias": list(layer.bias.shape) if layer.bias is not None and layer.weight is not None else None,
                "parameters": layer.n_params,
                "chunks": chunks,
            }
        )
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


@app.command()
def encode(
    files: list[Path] = typer.Argument(..., help="One or more .safetensors checkpoints."),
    predictor: Optional[Path] = typer.Option(None, envvar="SNE_PREDICTOR_PATH", help="Predictor directory (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with embeddings) instead of a table."),
) -> None:
    """Encode checkpoints in-process (one packed forward) and print predicted accuracy and embedding size."""
    from model.checkpoint import load_checkpoint
    from model.errors import CheckpointError
    from model.predictor import Predictor

    try:
        ckpts = [load_checkpoint(f) for f in files]
    except CheckpointError as e:
        _fail(str(e))
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


@app.command()
def zoo(
    out: Path = typer.Option(..., help="Output directory (checkpoints/, index.csv, zoo.json)."),
    arch: str = typer.Option("arch1", help="Architecture: arch1 or arch2 (paper Tables 3-5)."),
    dataset: str = typer.Option("digits", help="Dataset: digits (scikit-learn) or shapes (procedural)."),
    runs: int = typer.Option(2000, help="Training runs (each saves several epochs)."),
    seed: int = typer.Option(0, help="Seed for hyperparameters, initialisation and the split."),
    group_size: int = typer.Option(100, help="Models trained at once with vmap."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Generate a model zoo offline (resumable: re-running skips finished runs)."""
    import torch

    from model.zoo import generate_zoo

    torch.set_num_threads(threads)
    summary = generate_zoo(out, arch=arch, dataset=dataset, n_runs=runs, seed=seed, group_size=group_size)
    console.print(summary)


@app.command()
def train(
    zoo_dirs: list[Path] = typer.Option(..., "--zoo", help="Zoo directory to train on (repeatable)."),
    out: Path = typer.Option(..., help="Predictor output directory (model.safetensors, card.json, ...)."),
    config: str = typer.Option("small", help="Encoder size: small (2 CPU cores) or paper (Table 7; GPU)."),
    epochs: int = typer.Option(12),
    batch_size: int = typer.Option(8, help="Checkpoints per step (small batches: more steps per CPU minute)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (x0.3 at 60 % and 85 % of the epochs)."),
    clip_grad: float = typer.Option(0.0, help="Clip the gradient norm to this (0 = off)."),
    lir_weight: float = typer.Option(1.0, help="Logit Invariance Regularization weight (0 = off)."),
    lir_fraction: float = typer.Option(0.25, help="Share of each batch also encoded with permuted hidden units."),
    max_train: Optional[int] = typer.Option(None, help="Subsample the train split to this many checkpoints."),
    max_eval: Optional[int] = typer.Option(None, help="Subsample the val split (selection + calibration)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(2, help="torch threads."),
    name: Optional[str] = typer.Option(None, help="Predictor name in its card."),
) -> None:
    """Train SNE (BCE on test accuracy, Adam, LIR) and save a calibrated predictor; resumes if interrupted."""
    import torch

    from model.training import TrainOptions, train as run

    torch.set_num_threads(threads)
    opts = TrainOptions(config=config, epochs=epochs, batch_size=batch_size, lr=lr, lir_weight=lir_weight,
                        lir_fraction=lir_fraction, clip_grad=clip_grad, max_train=max_train, max_eval=max_eval, seed=seed, device=device, name=name)
    pred = run(zoo_dirs, out, opts)
    console.print(f"saved {pred.name} {pred.version} to {out} (val τ {pred.card['metrics']['val']['kendall_tau']:.3f})")


@app.command("eval")
def eval_(
    predictors: list[Path] = typer.Option(..., "--predictor", help="Trained predictor directory (repeatable)."),
    zoo_dirs: list[Path] = typer.Option(..., "--zoo", help="Zoo whose test split is scored (repeatable)."),
    out: Path = typer.Option(Path("eval"), help="Where results.json, results.md and the PNG plots go."),
    unregularized: Optional[Path] = typer.Option(None, help="A predictor trained without LIR, for the invariance comparison."),
    max_test: Optional[int] = typer.Option(None, help="Subsample each test split."),
    update_card: bool = typer.Option(False, help="Write the metrics into the first predictor's card."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Kendall τ of SNE vs STATNN vs MLP: in-distribution, cross-dataset, cross-architecture."""
    import torch

    from model.evaluation import evaluate, update_card as write_card

    torch.set_num_threads(threads)
    results = evaluate(predictors, zoo_dirs, out, unregularized=unregularized, max_test=max_test)
    console.print((out / "results.md").read_text())
    if update_card:
        write_card(predictors[0], results)
        console.print(f"metrics written to {predictors[0] / 'card.json'}")


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (default SNE_HOST or 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default SNE_PORT or 8000)."),
) -> None:
    """Run the HTTP service (app.main:app) with uvicorn."""
    from app.serve import serve as run

    run(host, port)


def _register_gate() -> None:
    from app.gate import gate_command

    app.command("gate")(gate_command)


_register_gate()

if __name__ == "__main__":  # pragma: no cover
    app()
