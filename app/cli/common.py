"""What every `sne` subcommand shares: the two consoles, the one-line failure, and validators for options.

Every command is registered through `guarded`: whatever it raises becomes one line on stderr and exit code 2,
unless `sne --debug ...` asked for the traceback. Validators run when a command is invoked (never at import,
so `sne --help` loads no model) and answer with `typer.BadParameter`, which typer shows as a usage error.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape


def is_tty(stderr: bool = False) -> bool:
    """Whether stdout (or stderr) is a terminal; a closed or replaced stream is not."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def log_width(stderr: bool = False) -> int | None:
    """Rich's width for a stream: its own measure on a terminal or where COLUMNS is set, else 160, because CI
    logs and pipes are not terminals and rich would fold a table's layer names at its default 80 columns."""
    return None if is_tty(stderr) or "COLUMNS" in os.environ else 160


console = Console(width=log_width())
err = Console(stderr=True, width=log_width(stderr=True))

EXIT_USAGE = 2
DEBUG = {"on": False}  # set by the global --debug option

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> NoReturn:
    """Print one line on stderr and exit 2: a CLI error is a message, never a traceback.

    The message is escaped (a `[reason]` tag is text, not rich markup) and never wrapped.
    """
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    expected = type(e).__name__ in {"LabelError", "TrainError", "CheckpointError"} or isinstance(e, (OSError, ValueError))
    return text if expected else f"{type(e).__name__}: {text} (run `sne --debug ...` for the traceback)"


def guarded(command: F) -> F:
    """The command, with any exception it raises turned into `fail(...)` (re-raised under --debug)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException, KeyboardInterrupt):
            raise
        except Exception as e:
            if DEBUG["on"]:
                raise
            fail(_one_line(e))

    return run  # type: ignore[return-value]


def existing_dir(value: Path | None) -> Path | None:
    """Callback for options that name a directory that must exist (a predictor, a zoo)."""
    if value is not None and not value.is_dir():
        raise typer.BadParameter(f"{value} is not a directory" if value.exists() else f"{value} does not exist")
    return value


def existing_dirs(values: list[Path] | None) -> list[Path] | None:
    for v in values or []:
        existing_dir(v)
    return values


def existing_files(values: list[Path] | None) -> list[Path] | None:
    for v in values or []:
        if not v.is_file():
            raise typer.BadParameter(f"{v} is not a file" if v.exists() else f"{v} does not exist")
    return values


def labelled_sources(labels: list[Path] | None, zoo_dirs: list[Path] | None) -> list[Path]:
    """`--labels` files then `--zoo` folders, the sources of train/eval/calibrate; at least one is required."""
    sources = [*(labels or []), *(zoo_dirs or [])]
    if not sources:
        raise typer.BadParameter("give --labels FILE.csv or --zoo DIR (at least one)", param_hint="'--labels' / '--zoo'")
    return sources


def config_name(value: str) -> str:
    """Callback: an SNE config name (`small`, `tiny`, `paper`, ...)."""
    from model.config import CONFIGS

    if value not in CONFIGS:
        raise typer.BadParameter(f"{value!r} is not a config; choose from {', '.join(CONFIGS)}")
    return value


class OnBad(str, Enum):
    """What to do with a labelled checkpoint that cannot be read."""

    fail = "fail"
    skip = "skip"


Threads = Annotated[int, typer.Option(min=1, help="torch threads.")]
OnBadCheckpoint = Annotated[OnBad, typer.Option(help="A checkpoint that cannot be read: fail (list them) or skip.")]


class StatsEncoding(str, Enum):
    """How the encoder turns each statistic into numbers (model.sne.SNE.stats_features)."""

    standard = "standard"
    ple = "ple"


class StatsView(str, Enum):
    """How the encoder reads each part's statistics (model.stats.relative_view)."""

    raw = "raw"
    relative = "relative"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
