"""What every `sne` subcommand shares: the two consoles and the one-line failure."""
from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    """Print one red line on stderr and exit 2: a CLI error is a message, never a traceback."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(EXIT_USAGE)
