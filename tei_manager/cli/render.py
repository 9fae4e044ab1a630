"""Rich rendering of orchestrator and supervisor events, and of the status table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from tei_manager.core.diff import Action
from tei_manager.models.fingerprint import Fingerprint
from tei_manager.orchestrator import (
    ActionsPlanned,
    ApplyFinished,
    Event,
    InstanceStatus,
    InstanceStep,
    Preparing,
    RollingBack,
    WaitingHealthy,
)

_ACTION_STYLE = {"create": "green", "replace": "yellow", "keep": "dim", "remove": "red"}
_STEP_STYLE = {"healthy": "green", "rollback": "red", "warning": "yellow", "removing": "red"}


def human_bytes(value: int | None) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def summarize(actions: Sequence[Action]) -> str:
    counts: dict[str, int] = {}
    for action in actions:
        counts[action.kind] = counts.get(action.kind, 0) + 1
    return ", ".join(f"{counts[k]} to {k}" for k in ("create", "replace", "remove", "keep") if counts.get(k))


class ApplyRenderer:
    """Prints steps as lines and shows long waits (pulls, downloads, warm-up) in a live status line."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status = console.status("", spinner="dots")
        self._live = False

    def _spin(self, text: str) -> None:
        self._status.update(text)
        if not self._live:
            self._status.start()
            self._live = True

    def _line(self, text: str) -> None:
        if self._live:
            self._status.stop()
            self._live = False
        self.console.print(text, highlight=False)

    def close(self) -> None:
        if self._live:
            self._status.stop()
            self._live = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, ActionsPlanned):
            if not any(a.changes_something for a in event.actions):
                return
            self._line(f"[bold]{event.profile}[/]: {summarize(event.actions)}")
            for a in event.actions:
                if a.changes_something:
                    self._line(f"  [{_ACTION_STYLE[a.kind]}]{a.kind:<8}[/] {a.name}  [dim]{a.reason}[/]")
        elif isinstance(event, Preparing):
            progress = ""
            if event.total:
                progress = f" {human_bytes(event.done)} / {human_bytes(event.total)}"
            self._spin(f"{event.instance}: {event.message}{progress}")
        elif isinstance(event, InstanceStep):
            if event.step == "waiting":
                self._spin(f"{event.instance}: waiting {event.detail}")
                return
            style = _STEP_STYLE.get(event.step, "cyan")
            detail = f"  [dim]{event.detail}[/]" if event.detail else ""
            self._line(f"  [{style}]{event.step:<9}[/] {event.instance}{detail}")
        elif isinstance(event, WaitingHealthy):
            log = f" | {event.last_log[:100]}" if event.last_log else ""
            self._spin(f"{event.instance}: waiting for /health {event.elapsed_s:.0f}s/{event.timeout_s:.0f}s "
                       f"({event.probe}){log}")
        elif isinstance(event, RollingBack):
            self._line("[bold red]apply failed, rolling back[/]")
        elif isinstance(event, ApplyFinished):
            self.close()


def status_table(rows: Sequence[InstanceStatus], *, title: str | None = None) -> Table:
    now = datetime.now(timezone.utc)
    several_profiles = len({r.profile for r in rows}) > 1
    several_backends = len({r.backend for r in rows}) > 1
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    if several_profiles:
        table.add_column("profile")
    for column in ("instance", "tenant", "model", "runtime", "device", "address", "state", "health",
                   "uptime", "restarts", "GPU mem"):
        table.add_column(column, justify="right" if column in ("restarts", "GPU mem", "uptime") else "left")
    if several_backends:
        table.add_column("backend")
    for r in rows:
        health_style = "green" if r.health == "healthy" else ("yellow" if r.health in ("starting", "-") else "red")
        state_style = "green" if r.state == "running" else "red"
        cells = [
            r.name + (f" [dim]({r.slot})[/]" if r.slot else ""),
            r.tenant, r.model.rsplit("/", 1)[-1], r.runtime, r.device, r.address,
            f"[{state_style}]{r.state}[/]",
            f"[{health_style}]{r.health}[/]",
            human_duration(r.uptime_s(now)),
            str(r.restarts),
            "-" if r.gpu_memory_mib is None else f"{r.gpu_memory_mib} MiB",
        ]
        if several_profiles:
            cells.insert(0, r.profile)
        if several_backends:
            cells.append(r.backend)
        table.add_row(*cells)
    return table


def print_table(console: Console, table: Table) -> None:
    """Full width when piped (a log or CI keeps every column), the terminal's width otherwise."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(file=console.file, width=200, no_color=console.no_color).print(table)


def status_json(rows: Sequence[InstanceStatus],
                fingerprints: Mapping[tuple[str, str], Fingerprint] | None = None) -> list[dict[str, Any]]:
    """`status --json`: one object per instance; `fingerprint` is its deployment's (null when none
    is recorded yet), keyed in `fingerprints` by (profile, deployment)."""
    now = datetime.now(timezone.utc)
    found = fingerprints or {}
    out = []
    for r in rows:
        recorded = found.get((r.profile, r.deployment))
        out.append({
            "instance": r.name, "profile": r.profile, "deployment": r.deployment, "backend": r.backend,
            "tenant": r.tenant, "model": r.model, "runtime": r.runtime, "device": r.device, "bind": r.bind,
            "port": r.port, "state": r.state, "health": r.health, "uptime_s": r.uptime_s(now),
            "restarts": r.restarts, "gpu_memory_mib": r.gpu_memory_mib, "spec_hash": r.spec_hash, "slot": r.slot,
            "pid": r.pid, "fingerprint": recorded.as_status(now.timestamp()) if recorded else None,
        })
    return out


def fingerprint_line(profile: str, found: Fingerprint) -> str:
    """`status`'s line per deployment: how old its fingerprint is, and the last change it let through."""
    drift = found.last_drift.describe() if found.last_drift else "none"
    return (f"fingerprint {profile}/{found.deployment}: recorded {human_duration(found.age_s())} ago; "
            f"last drift: {drift}")
