"""`apply`, `down`, `status`, `logs` and `watch`: thin wrappers over tei_manager.orchestrator.

Every command takes `--backend` and each backend's own options (tei_manager.cli.options);
the backend and the plan come from tei_manager.services, as for every other command.
"""

from __future__ import annotations

import json

import typer

from tei_manager.cli import watch_cmd
from tei_manager.cli.models_cmd import PullProgress, print_pulled
from tei_manager.cli.options import backend_option, with_backend_options
from tei_manager.cli.output import console, err_console
from tei_manager.cli.render import ApplyRenderer, fingerprint_line, print_table, status_json, status_table
from tei_manager.errors import BackendError, TeiManagerError
from tei_manager.models.fingerprint import recorded
from tei_manager.orchestrator import DEFAULT_TIMEOUT_S, InstanceStep, down, status
from tei_manager.services import (
    Options,
    apply_guarded,
    close_all,
    live_plan,
    open_readers,
    open_target,
    profile_name,
    pull_missing,
)

BackendOpt = backend_option()


@with_backend_options


def apply_cmd(
    profile: str = typer.Argument(..., help="Profile file, e.g. profiles/multi-tenant.yaml."),
    backend: str = BackendOpt,
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT_S, "--timeout", min=1,
        help="Seconds each instance may take to become healthy (missing models are pulled before)."),
    accept_embedding_change: bool = typer.Option(
        False, "--accept-embedding-change",
        help="Switch even when a deployment's embeddings or scores drift from its recorded fingerprint."),
    *,
    backend_options: Options,
) -> None:
    """Converge on a profile: create, replace or keep instances, wait until healthy, roll back on failure."""
    from tei_manager.services import load, probe

    facts = probe(backend_options)
    loaded = load(profile)
    target = open_target(backend, loaded.name, backend_options, facts)
    engine = target.backend
    try:
        plan = live_plan(profile, target, facts)
        for warning in plan.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        with PullProgress() as bars:  # models first: the health gates then time start-up only
            pulled = pull_missing(profile, on_progress=bars)
        print_pulled(pulled)
        renderer = ApplyRenderer(console)
        try:
            result = apply_guarded(profile, plan, engine, on_event=renderer, timeout_s=timeout,
                                   accept_embedding_change=accept_embedding_change)
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


@with_backend_options
def down_cmd(
    profile: str = typer.Argument(..., help="Profile file or profile name."),
    backend: str = BackendOpt,
    *,
    backend_options: Options,
) -> None:
    """Stop and remove every instance the profile created (the shared model cache is kept)."""
    name = profile_name(profile)
    engines = open_readers(backend, backend_options)
    try:
        removed: list[str] = []
        notes: list[str] = []
        for engine in engines:
            gone = down(name, engine, on_event=_print_step)
            if gone and engine.down_note:
                notes.append(engine.down_note)
            removed += gone
        if removed:
            kept = "".join(f"; {note}" for note in notes)
            console.print(f"[green]removed[/] {len(removed)} instance(s) of {name}{kept}", soft_wrap=True)
        else:
            console.print(f"nothing to remove: no instance of profile {name!r} is running", soft_wrap=True)
    finally:
        close_all(engines)


def _print_step(event: object) -> None:
    if isinstance(event, InstanceStep):
        detail = f" ({event.detail})" if event.detail else ""
        console.print(f"  [red]{event.step}[/] {event.instance}{detail}", highlight=False)


@with_backend_options
def status_cmd(
    profile: str | None = typer.Argument(None, help="Profile file or name; all profiles when omitted."),
    backend: str = BackendOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    *,
    backend_options: Options,
) -> None:
    """Instances with health, uptime, restarts, address and GPU memory."""
    name = profile_name(profile) if profile else None
    engines = open_readers(backend, backend_options)
    try:
        rows = status(engines, name)
    finally:
        close_all(engines)
    fingerprints = {(profile, found.deployment): found
                    for profile in sorted({r.profile for r in rows}) for found in recorded(profile)}
    if as_json:
        typer.echo(json.dumps(status_json(rows, fingerprints), indent=2))
        return
    if not rows:
        console.print(f"no instances{f' of profile {name!r}' if name else ''} are running "
                      f"(backends: {', '.join(e.name for e in engines)})", soft_wrap=True)
        return
    print_table(console, status_table(rows))
    for (profile, _), found in fingerprints.items():
        console.print(fingerprint_line(profile, found), highlight=False, soft_wrap=True)


@with_backend_options
def logs_cmd(
    instance: str = typer.Argument(..., help="Instance name, e.g. finance-rerank."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    tail: int = typer.Option(100, "--tail", "-n", help="Lines from the end to show first (-1: all)."),
    profile: str | None = typer.Option(None, "--profile", help="Profile file or name, when names repeat."),
    backend: str = BackendOpt,
    *,
    backend_options: Options,
) -> None:
    """Print an instance's logs (the runtime's stdout and stderr)."""
    name = profile_name(profile) if profile else None
    engines = open_readers(backend, backend_options)
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
        close_all(engines)


def register(app: typer.Typer) -> None:
    app.command("apply")(apply_cmd)
    app.command("status")(status_cmd)
    app.command("down")(down_cmd)
    app.command("logs")(logs_cmd)
    watch_cmd.register(app)


__all__ = ["TeiManagerError", "register"]
