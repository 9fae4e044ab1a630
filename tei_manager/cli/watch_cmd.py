"""`tei-manager watch PROFILE`: run the supervisor in the foreground until Ctrl-C."""

from __future__ import annotations

import threading
from datetime import datetime

import typer

from tei_manager.cli.options import backend_option, with_backend_options
from tei_manager.cli.output import console
from tei_manager.services import Options, live_plan, load, open_target, probe
from tei_manager.supervisor import Supervisor, SupervisorEvent

_STYLE = {"healthy": "green", "restarted": "green", "unhealthy": "yellow", "drifted": "yellow",
          "restarting": "yellow", "engine-restarted": "yellow"}


def _print(event: SupervisorEvent) -> None:
    stamp = datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
    style = _STYLE.get(event.kind, "red")
    console.print(f"{stamp} [{style}]{event.kind:<16}[/] {event.instance}  [dim]{event.detail}[/]", highlight=False)


@with_backend_options
def watch_cmd(
    profile: str = typer.Argument(..., help="Profile file whose instances to supervise."),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="Seconds between probe rounds."),
    failures: int = typer.Option(3, "--failures", min=1, help="Failed probes in a row before a restart."),
    backend: str = backend_option(),
    *,
    backend_options: Options,
) -> None:
    """Supervise a profile: restart instances that exit or fail their health checks, with back-off."""
    from tei_manager.health import BackoffPolicy

    facts = probe(backend_options)
    target = open_target(backend, load(profile).name, backend_options, facts)
    engine = target.backend
    try:
        plan = live_plan(profile, target, facts)
        supervisor = Supervisor(engine, plan, on_event=_print, policy=BackoffPolicy(failure_threshold=failures))
        console.print(f"watching {len(plan.instances)} instance(s) of {plan.profile} every {interval:g}s "
                      f"({engine.name} backend); Ctrl-C to stop")
        stop = threading.Event()
        try:
            supervisor.run(stop, interval_s=interval)
        except KeyboardInterrupt:
            stop.set()
    finally:
        engine.close()


def register(app: typer.Typer) -> None:
    app.command("watch")(watch_cmd)
