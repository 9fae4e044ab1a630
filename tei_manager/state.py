"""Where tei-manager keeps per-profile local state: process records, logs and the event log.

`$TEI_MANAGER_STATE_DIR/<profile>/`, by default `~/.local/state/tei-manager/<profile>/`
(`$XDG_STATE_HOME` is honoured).  Docker instances keep their state in labels; this directory
holds only what an engine cannot: the process backend's records and the supervisor's events.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

EVENTS_FILE = "events.jsonl"
# The event log is trimmed to this many lines when it grows past twice as many.
EVENTS_KEEP = 2000


def state_root() -> Path:
    env = os.environ.get("TEI_MANAGER_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "tei-manager"


def state_dir(profile: str, *, create: bool = False) -> Path:
    path = state_root() / profile
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass(frozen=True)
class RecordedEvent:
    """One supervisor event as stored on disk (and read back by `status`)."""

    at: float
    profile: str
    instance: str
    kind: str
    detail: str = ""


def append_event(event: RecordedEvent) -> None:
    path = state_dir(event.profile, create=True) / EVENTS_FILE
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(event), sort_keys=True) + "\n")
    _trim(path)


def _trim(path: Path) -> None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    if len(lines) > 2 * EVENTS_KEEP:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines[-EVENTS_KEEP:]) + "\n", encoding="utf-8")
        tmp.replace(path)


def read_events(profile: str, *, instance: str | None = None, since: float | None = None) -> list[RecordedEvent]:
    path = state_dir(profile) / EVENTS_FILE
    events: list[RecordedEvent] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            event = RecordedEvent(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a torn line from a killed writer
        if instance is not None and event.instance != instance:
            continue
        if since is not None and event.at < since:
            continue
        events.append(event)
    return events


def supervisor_restarts(profile: str) -> dict[str, int]:
    """Restarts the supervisor performed, per instance (what `status` adds to the engine's own)."""
    counts: dict[str, int] = {}
    for event in read_events(profile):
        if event.kind == "restarted":
            counts[event.instance] = counts.get(event.instance, 0) + 1
    return counts


def now() -> float:
    return time.time()
