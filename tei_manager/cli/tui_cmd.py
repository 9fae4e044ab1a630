"""`tei-manager tui`: the dashboard.  Textual is an optional extra, imported only here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tei_manager.cli.options import backend_choice
from tei_manager.errors import TeiManagerError


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)


def tui(
    profiles_dir: Annotated[
        Path, typer.Option("--profiles-dir", help="Where the profiles to apply live.")
    ] = Path("profiles"),
    backend: Annotated[
        str, typer.Option("--backend", help="auto or a backend's name (as for apply/status).",
                          callback=backend_choice)
    ] = "auto",
    gateway_url: Annotated[
        str, typer.Option("--gateway-url", help="The running gateway, for per-tenant traffic.")
    ] = "http://127.0.0.1:8080",
) -> None:
    """Live dashboard: GPUs, instances and tenants; apply profiles, restart and stop instances."""
    try:
        from tei_manager.tui.app import TeiManagerApp
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("textual"):
            raise
        raise TeiManagerError("the dashboard needs textual, which is not installed",
                              fix="install the package's tui extra, or textual itself: pip install textual") from None
    from tei_manager.tui.services import TuiServices

    services = TuiServices(profiles_dir=profiles_dir, backend=backend, gateway_url=gateway_url)
    TeiManagerApp(services).run()
