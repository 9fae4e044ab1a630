"""Assembles the `tei-manager` Typer app from one module per command.

Each command module exposes `register(app)`; commands call services
(planner, orchestrator, gateway, TUI) and only format their results.
"""

from __future__ import annotations

import sys

import click
import typer

from tei_manager import __version__
from tei_manager.cli import apply_cmds, export_cmd, models_cmd, plan_cmds, serve_cmd, tui_cmd, tune_cmd
from tei_manager.cli.output import report_error
from tei_manager.errors import TeiManagerError

try:  # typer >= 0.16 vendors its own click; usage errors come from whichever one parsed the line
    from typer._click.exceptions import ClickException as _VendoredClickException

    _CLICK_ERRORS: tuple[type[Exception], ...] = (click.exceptions.ClickException, _VendoredClickException)
except ImportError:  # pragma: no cover - older typer uses click itself
    _CLICK_ERRORS = (click.exceptions.ClickException,)

app = typer.Typer(
    name="tei-manager",
    help="Plan, run and route TEI embedding and rerank models for several tenants.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tei-manager {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """tei-manager."""


for module in (plan_cmds, apply_cmds, models_cmd, serve_cmd, tui_cmd, tune_cmd, export_cmd):
    module.register(app)


def _usage_error(exc: Exception) -> int:
    """Print a click usage error (from click or typer's vendored copy) as click would; its exit code."""
    show = getattr(exc, "show", None)
    if callable(show):
        show()
    else:
        typer.echo(str(exc), err=True)
    code = getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 2


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user errors print without a traceback and set the exit code."""
    try:
        # With standalone_mode off, click returns a command's exit code instead of exiting.
        result = app(args=argv, standalone_mode=False)
    except TeiManagerError as exc:
        report_error(exc)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except _CLICK_ERRORS as exc:  # usage errors carry their own exit code and message
        return _usage_error(exc)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
