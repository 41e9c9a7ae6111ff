"""The `sne` command line (pyproject: `sne = "app.cli:app"`): one module per subcommand.

Every command is registered here, explicitly; importing a subcommand module registers nothing. Each command
imports torch, the model and the service inside its body, so `sne --help` stays fast.
"""
from __future__ import annotations

import typer

from app.cli.encode import encode_command
from app.cli.evaluate import eval_command
from app.cli.gate.command import gate_command
from app.cli.inspect import inspect_command
from app.cli.serve import serve_command
from app.cli.train import train_command
from app.cli.zoo import zoo_command

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="SNE: encode neural-network checkpoints and predict their accuracy."
)
app.command("inspect")(inspect_command)
app.command("encode")(encode_command)
app.command("zoo")(zoo_command)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("serve")(serve_command)
app.command("gate")(gate_command)

__all__ = ["app"]
