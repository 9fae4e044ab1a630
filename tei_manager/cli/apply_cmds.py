"""`apply`, `down`, `status`, `logs` and `watch`: thin wrappers over tei_manager.orchestrator.

Every command takes `--backend auto|docker|process` and `--docker-url`
(see tei_manager.backends.select for what `auto` means).
"""

from __future__ import annotations

import json

import typer

from tei_manager.backends.base import Backend
from tei_manager.backends.select import backend_for_apply, backends_for_reading
from tei_manager.cli import watch_cmd
from tei_manager.cli.live import live_plan, profile_name
from tei_manager.cli.output import console, err_console
from tei_manager.cli.render import ApplyRenderer, print_table, status_json, status_table
from tei_manager.cli.watch_cmd import backend_choice
from tei_manager.errors import BackendError, TeiManagerError
from tei_manager.orchestrator import DEFAULT_TIMEOUT_S, InstanceStep, apply, down, status

BACKEND_HELP = "auto (Docker when it answers, else local processes), docker or process."
BackendOpt = typer.Option("auto", "--backend", help=BACKEND_HELP, callback=backend_choice)
DockerUrlOpt = typer.Option(None, "--docker-url", envvar="DOCKER_HOST",
                            help="Docker Engine address, e.g. unix:///var/run/docker.sock.")


def _close(backends: list[Backend]) -> None:
    for backend in backends:
        backend.close()


def apply_cmd(
    profile: str = typer.Argument(..., help="Profile file, e.g. profiles/multi-tenant.yaml."),
    backend: str = BackendOpt,
    docker_url: str | None = DockerUrlOpt,
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, "--timeout", min=1,
                                  help="Seconds each instance may take to become healthy (downloads included)."),
) -> None:
    """Converge on a profile: create, replace or keep instances, wait until healthy, roll back on failure."""
    from tei_manager.profiles import load_profile

    name = load_profile(profile).name
    engine = backend_for_apply(backend_choice(backend), name, docker_url)
    try:
        plan = live_plan(profile, engine, docker_url)
        for warning in plan.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        renderer = ApplyRenderer(console)
        try:
            result = apply(plan, engine, on_event=renderer, timeout_s=timeout)
        finally:
            renderer.close()
        if result.changed:
            console.print(f"[green]applied[/] {plan.profile} in {result.duration_s:.1f}s ({engine.name} backend)",
                          soft_wrap=True)
        else:
            console.print(f"[green]nothing to change[/]: {len(result.actions)} instance(s) of {plan.profile} "
                          f"already match the profile ({engine.name} backend)", soft_wrap=True)
        print_table(console, status_table(list(result.instances)))
    finally:
        engine.close()


def down_cmd(
    profile: str = typer.Argument(..., help="Profile file or profile name."),
    backend: str = BackendOpt,
    docker_url: str | None = DockerUrlOpt,
) -> None:
    """Stop and remove every instance the profile created (the shared model cache is kept)."""
    name = profile_name(profile)
    engines = backends_for_reading(backend_choice(backend), docker_url)
    try:
        removed: list[str] = []
        containers = False
        for engine in engines:
            gone = down(name, engine, on_event=_print_step)
            containers = containers or (engine.name == "docker" and bool(gone))
            removed += gone
        if removed:
            kept = "; the shared Hugging Face cache volume is kept (docker volume rm it to free the space)"
            console.print(f"[green]removed[/] {len(removed)} instance(s) of {name}{kept if containers else ''}",
                          soft_wrap=True)
        else:
            console.print(f"nothing to remove: no instance of profile {name!r} is running", soft_wrap=True)
    finally:
        _close(engines)


def _print_step(event: object) -> None:
    if isinstance(event, InstanceStep):
        detail = f" ({event.detail})" if event.detail else ""
        console.print(f"  [red]{event.step}[/] {event.instance}{detail}", highlight=False)


def status_cmd(
    profile: str | None = typer.Argument(None, help="Profile file or name; all profiles when omitted."),
    backend: str = BackendOpt,
    docker_url: str | None = DockerUrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Instances with health, uptime, restarts, address and GPU memory."""
    name = profile_name(profile) if profile else None
    engines = backends_for_reading(backend_choice(backend), docker_url)
    try:
        rows = status(engines, name)
    finally:
        _close(engines)
    if as_json:
        typer.echo(json.dumps(status_json(rows), indent=2))
        return
    if not rows:
        console.print(f"no instances{f' of profile {name!r}' if name else ''} are running "
                      f"(backends: {', '.join(e.name for e in engines)})", soft_wrap=True)
        return
    print_table(console, status_table(rows))


def logs_cmd(
    instance: str = typer.Argument(..., help="Instance name, e.g. finance-rerank."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    tail: int = typer.Option(100, "--tail", "-n", help="Lines from the end to show first (-1: all)."),
    profile: str | None = typer.Option(None, "--profile", help="Profile file or name, when names repeat."),
    backend: str = BackendOpt,
    docker_url: str | None = DockerUrlOpt,
) -> None:
    """Print an instance's logs (the runtime's stdout and stderr)."""
    name = profile_name(profile) if profile else None
    engines = backends_for_reading(backend_choice(backend), docker_url)
    try:
        matches = [(e, o) for e in engines for o in e.list(name) if o.name == instance and not o.slot]
        if not matches:
            raise BackendError(f"no instance named {instance!r}" + (f" in profile {name!r}" if name else ""),
                               where=instance, fix="see `tei-manager status` for the names")
        if len(matches) > 1:
            profiles = sorted({o.profile for _, o in matches})
            raise BackendError(f"{instance!r} exists in several profiles: {', '.join(profiles)}",
                               where=instance, fix="add --profile NAME")
        engine, obs = matches[0]
        try:
            for line in engine.logs(obs, tail=tail, follow=follow):
                typer.echo(line)
        except KeyboardInterrupt:
            pass
    finally:
        _close(engines)


def register(app: typer.Typer) -> None:
    app.command("apply")(apply_cmd)
    app.command("status")(status_cmd)
    app.command("down")(down_cmd)
    app.command("logs")(logs_cmd)
    watch_cmd.register(app)


__all__ = ["TeiManagerError", "register"]
