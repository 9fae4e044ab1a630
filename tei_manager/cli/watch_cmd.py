"""`tei-manager watch PROFILE`: run the supervisor in the foreground until Ctrl-C."""

from __future__ import annotations

import threading
from datetime import datetime

import typer

from tei_manager.backends.select import BackendChoice, backend_for_apply
from tei_manager.cli.live import live_plan
from tei_manager.cli.output import console
from tei_manager.supervisor import Supervisor, SupervisorEvent

_STYLE = {"healthy": "green", "restarted": "green", "unhealthy": "yellow", "drifted": "yellow",
          "restarting": "yellow", "engine-restarted": "yellow"}


def _print(event: SupervisorEvent) -> None:
    stamp = datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
    style = _STYLE.get(event.kind, "red")
    console.print(f"{stamp} [{style}]{event.kind:<16}[/] {event.instance}  [dim]{event.detail}[/]", highlight=False)


def watch_cmd(
    profile: str = typer.Argument(..., help="Profile file whose instances to supervise."),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="Seconds between probe rounds."),
    failures: int = typer.Option(3, "--failures", min=1, help="Failed probes in a row before a restart."),
    backend: str = typer.Option("auto", "--backend", help="auto, docker or process."),
    docker_url: str | None = typer.Option(None, "--docker-url", envvar="DOCKER_HOST", help="Docker Engine address."),
) -> None:
    """Supervise a profile: restart instances that exit or fail their health checks, with back-off."""
    from tei_manager.health import BackoffPolicy
    from tei_manager.profiles import load_profile

    choice: BackendChoice = backend_choice(backend)
    engine = backend_for_apply(choice, load_profile(profile).name, docker_url)
    try:
        plan = live_plan(profile, engine, docker_url)
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


def backend_choice(value: str) -> BackendChoice:
    lowered = value.lower()
    if lowered not in ("auto", "docker", "process"):
        raise typer.BadParameter("choose auto, docker or process", param_hint="--backend")
    return lowered  # type: ignore[return-value]


def register(app: typer.Typer) -> None:
    app.command("watch")(watch_cmd)
