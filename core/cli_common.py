"""What every ``vigil`` command module shares: the error console, failing with a
message and an exit code, and loading the configuration or failing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .config import VigilConfig, load_config
from .errors import VigilError

__all__ = ["config_or_fail", "err", "fail"]

#: Where errors and progress go (standard error).
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error (taken literally, never as markup); return the
    ``typer.Exit`` to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def config_or_fail(path: Path | None) -> VigilConfig:
    """The configuration from ``path`` (or the defaults); a bad one exits with code 2."""
    try:
        return load_config(path)
    except VigilError as exc:
        raise fail(str(exc)) from None
