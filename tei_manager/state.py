"""Where tei-manager keeps per-profile local state: process records, logs and the event log.

`$TEI_MANAGER_STATE_DIR/<profile>/`, by default `~/.local/state/tei-manager/<profile>/`
(`$XDG_STATE_HOME` is honoured).  Docker instances keep their state in labels; this directory
holds only what an engine cannot: the process backend's records and the supervisor's events.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
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


class ProfileBusy(Exception):
    """Another tei-manager process holds the profile's lock (an apply or down in progress)."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(holder)


@contextlib.contextmanager
def profile_lock(profile: str, *, purpose: str) -> Iterator[None]:
    """Hold the profile's lock while changing its instances: one apply/down at a time, and the
    supervisor skips a round instead of healing an instance an apply is replacing.

    Raises ProfileBusy (with what the holder wrote: pid and purpose) when it is taken.
    """
    path = state_dir(profile, create=True) / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProfileBusy(os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
