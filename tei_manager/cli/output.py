"""Shared console output: one place decides how errors and tables look."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from tei_manager.errors import TeiManagerError

console = Console()
err_console = Console(stderr=True)


def report_error(exc: TeiManagerError) -> None:
    """Print a user-facing error: what, where and how to fix it; never a traceback."""
    err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, markup=True, soft_wrap=True)
