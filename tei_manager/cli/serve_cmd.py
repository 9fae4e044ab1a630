"""`tei-manager serve PROFILE`: the multi-tenant gateway in front of the profile's instances.

Upstream addresses come from the same live plan `apply` uses (so `port: auto` resolves to the
ports the running instances got); API keys from `resolve_secrets`.  Editing the profile file, or
sending SIGHUP, reloads keys, quotas and routes without dropping requests in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import typer

from tei_manager.cli.output import console
from tei_manager.core.models import Profile
from tei_manager.core.plan import Plan

BACKEND_HELP = "Where the instances run: auto (the backend that runs this profile), docker or process."


def load_for_gateway(
    path: Path, backend: str = "auto", docker_url: str | None = None
) -> tuple[Profile, Plan, Mapping[str, Iterable[str]]]:
    """Profile, live plan and tenant keys: everything the gateway needs (raises ProfileError/PlanError)."""
    from tei_manager.backends.select import backend_for_apply
    from tei_manager.cli.live import live_plan, profile_name
    from tei_manager.profiles import load_profile_with_source, resolve_secrets

    profile, source = load_profile_with_source(path)
    keys = resolve_secrets(profile, source=source)
    engine = backend_for_apply(backend, profile_name(str(path)), docker_url)  # type: ignore[arg-type]
    try:
        plan = live_plan(str(path), engine, docker_url)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    return profile, plan, keys


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        profile: Path = typer.Argument(..., help="Profile YAML file."),
        host: str | None = typer.Option(None, "--host", help="Address to listen on; default gateway.bind (127.0.0.1)."),
        port: int | None = typer.Option(None, "--port", help="Port to listen on; default gateway.port (8080)."),
        backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
        docker_url: str | None = typer.Option(None, "--docker-url", help="Docker Engine URL (default: environment)."),
        instance_concurrency: int | None = typer.Option(
            None, "--instance-concurrency", min=1,
            help="Requests one instance runs at once; beyond it requests wait in priority order. "
            "Default: 2 x max_batch_requests, else 32.",
        ),
        watch: bool = typer.Option(True, "--watch/--no-watch", help="Reload when the profile file changes."),
        log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    ) -> None:
        """Serve the gateway for PROFILE: TEI routes, /v1/embeddings and /v1/rerank, per-tenant keys and QoS."""
        import uvicorn

        from tei_manager.gateway.app import create_app

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        loaded_profile, plan, keys = load_for_gateway(profile, backend, docker_url)
        gateway = create_app(
            loaded_profile,
            plan,
            keys=keys,
            instance_concurrency=instance_concurrency,
            reload=lambda: load_for_gateway(profile, backend, docker_url),
            watch_path=str(profile) if watch else None,
        )
        bind = host or loaded_profile.gateway.bind
        listen = port or loaded_profile.gateway.port
        tenants = len(loaded_profile.tenants)
        console.print(
            f"[green]gateway[/] {loaded_profile.name}: {len(plan.instances)} instances, "
            f"{tenants or 'no'} tenants{'' if tenants else ' (open: no API key needed)'}, "
            f"listening on http://{bind}:{listen}"
        )
        # Access logs would print every request line; keys never appear in them, but volume does.
        from tei_manager.gateway.server import server_options

        uvicorn.run(gateway, host=bind, port=listen, log_level=log_level, access_log=False, **server_options())
