"""What every `sne` subcommand shares: the two consoles and the one-line failure."""
from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    """Print one line on stderr and exit 2: a CLI error is a message, never a traceback.

    The message is escaped (a `[reason]` tag is text, not rich markup) and never wrapped.
    """
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)
