"""The `sne` command line (pyproject: `sne = "app.cli:app"`): one module per subcommand.

Every command is registered here, explicitly; importing a subcommand module registers nothing. Each command
imports torch, the model and the service inside its body, so `sne --help` stays fast.
"""
from __future__ import annotations

from typing import Annotated

import typer

from app.cli.calibrate import calibrate_command
from app.cli.common import DEBUG, guarded
from app.cli.encode import encode_command
from app.cli.evaluate import eval_command
from app.cli.gate.command import gate_command
from app.cli.inspect import inspect_command
from app.cli.serve import serve_command
from app.cli.train import train_command
from app.cli.zoo import zoo_command

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="SNE: encode neural-network checkpoints and predict their accuracy.",
)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of a failure.")] = False) -> None:
    """SNE: encode neural-network checkpoints and predict their accuracy."""
    DEBUG["on"] = debug


app.command("inspect")(guarded(inspect_command))
app.command("encode")(guarded(encode_command))
app.command("zoo")(guarded(zoo_command))
app.command("train")(guarded(train_command))
app.command("eval")(guarded(eval_command))
app.command("calibrate")(guarded(calibrate_command))
app.command("serve")(guarded(serve_command))
app.command("gate")(guarded(gate_command))

__all__ = ["app"]
