"""`tei-manager serve PROFILE`: the multi-tenant gateway in front of the profile's instances.

Upstream addresses come from the same live plan `apply` uses (so `port: auto` resolves to the
ports the running instances got); API keys from `resolve_secrets`.  A reload re-plans only when
something the plan depends on changed (`GatewayLoader`).  Editing the profile file, or
sending SIGHUP, reloads keys, quotas and routes without dropping requests in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import typer

from tei_manager.cli.options import backend_option, with_backend_options
from tei_manager.cli.output import console
from tei_manager.core.models import Profile
from tei_manager.core.plan import Plan
from tei_manager.services import Options, live_plan, open_target, probe

BACKEND_HELP = "Where the instances run: auto (the backend that runs this profile) or a backend's name."

#: What a reload may change without re-planning: only the gateway's own settings and the tenants.
_GATEWAY_ONLY = {"tenants", "gateway", "description"}


class GatewayLoader:
    """Profile, plan and tenant keys for the gateway; a reload re-plans (probing the engine and
    NVML) only when something the plan depends on changed, else it reuses the last plan with the
    new tenants and gateway settings."""

    def __init__(self, path: Path, backend: str = "auto", options: Options | None = None) -> None:
        self.path = path
        self.backend = backend
        self.options = options or {}
        self._last: tuple[dict[str, object], Plan] | None = None
        self.plans_made = 0

    def __call__(self) -> tuple[Profile, Plan, Mapping[str, Iterable[str]]]:
        from tei_manager.profiles import load_profile_with_source, resolve_secrets

        profile, source = load_profile_with_source(self.path)
        keys = resolve_secrets(profile, source=source)
        inputs = profile.model_dump(mode="json", exclude=_GATEWAY_ONLY)
        if self._last is not None and self._last[0] == inputs:
            plan = self._last[1].model_copy(update={"tenants": dict(profile.tenants), "gateway": profile.gateway})
        else:
            facts = probe(self.options)
            target = open_target(self.backend, profile.name, self.options, facts)
            try:
                plan = live_plan(self.path, target, facts)
            finally:
                target.close()
            self.plans_made += 1
        self._last = (inputs, plan)
        return profile, plan, keys


def load_for_gateway(
    path: Path, backend: str = "auto", options: Options | None = None
) -> tuple[Profile, Plan, Mapping[str, Iterable[str]]]:
    """Profile, live plan and tenant keys: everything the gateway needs (raises ProfileError/PlanError)."""
    return GatewayLoader(path, backend, options)()


def register(app: typer.Typer) -> None:
    @app.command("serve")
    @with_backend_options
    def serve(
        profile: Path = typer.Argument(..., help="Profile YAML file."),
        host: str | None = typer.Option(None, "--host", help="Address to listen on; default gateway.bind (127.0.0.1)."),
        port: int | None = typer.Option(None, "--port", help="Port to listen on; default gateway.port (8080)."),
        backend: str = backend_option(help=BACKEND_HELP),
        instance_concurrency: int | None = typer.Option(
            None, "--instance-concurrency", min=1,
            help="Requests one instance runs at once; beyond it requests wait in priority order. "
            "Default: 2 x max_batch_requests, else 32.",
        ),
        watch: bool = typer.Option(True, "--watch/--no-watch", help="Reload when the profile file changes."),
        log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
        *,
        backend_options: Options,
    ) -> None:
        """Serve the gateway for PROFILE: TEI routes, /v1/embeddings and /v1/rerank, per-tenant keys and QoS."""
        import uvicorn

        from tei_manager.gateway.app import create_app

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        loader = GatewayLoader(profile, backend, backend_options)
        loaded_profile, plan, keys = loader()
        gateway = create_app(
            loaded_profile,
            plan,
            keys=keys,
            instance_concurrency=instance_concurrency,
            reload=loader,
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
