"""Self-healing: keep a profile's instances alive and healthy.

    sup = Supervisor(backend, plan, clock=SystemClock(), on_event=print)
    sup.tick()                  # one probe round (what tests drive)
    sup.run(stop_event)         # tick every `interval_s` until the event is set
    sup.snapshot()              # per-instance phase, failures, restarts (for the TUI / metrics)

Each round reads the instances from the backend, probes /health of the running ones and
notices exited, OOM-killed or missing ones.  An instance is restarted after
`policy.failure_threshold` consecutive failed probes, or at once when it has exited, with
exponential back-off between restarts in a row (health.BackoffPolicy).  Instances that the
engine is already restarting by itself (Docker's restart policy) are left to it.  Instances
whose spec differs from the plan are not touched: that is `apply`'s job.

A restart stops the old instance with SIGTERM and, after `STOP_GRACE_S`, SIGKILL: an instance
the supervisor replaces is already failing, and one that is hung (or SIGSTOPped) never honours
SIGTERM.  Each round also reaps any child process of ours that has exited, so restarts leave no
zombies behind.

Restarts are counted in memory and appended to the profile's event log
(tei_manager.state), which `status` adds to the engine's own restart count, so the number
survives the supervisor and is the same whoever reads it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tei_manager.backends.base import Backend
from tei_manager.core.diff import ObservedInstance
from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.errors import BackendError
from tei_manager.health import (
    BackoffPolicy,
    Clock,
    HealthProbe,
    HealthTracker,
    HttpHealthProbe,
    SystemClock,
)
from tei_manager.state import ProfileBusy, RecordedEvent, append_event, profile_lock

# How long an instance being replaced may take to exit on SIGTERM before it is killed.
STOP_GRACE_S = 3.0

EventKind = Literal["healthy", "unhealthy", "exited", "missing", "engine-restarted", "drifted",
                    "restarting", "restarted", "restart-failed"]


@dataclass(frozen=True)
class SupervisorEvent:
    """Something the supervisor saw or did.  `at` is wall-clock time (seconds since the epoch)."""

    at: float
    profile: str
    instance: str
    kind: EventKind
    detail: str = ""


@dataclass(frozen=True)
class InstanceHealth:
    """The supervisor's view of one instance (a row for the TUI or a metrics collector)."""

    instance: str
    phase: str  # starting | healthy | unhealthy | down
    consecutive_failures: int
    restarts: int
    last_error: str | None
    next_restart_in_s: float | None


class Supervisor:
    """Probes and heals the instances of one plan through one backend."""

    def __init__(self, backend: Backend, plan: Plan, *, clock: Clock | None = None,
                 on_event: Callable[[SupervisorEvent], None] | None = None,
                 policy: BackoffPolicy | None = None, probe: HealthProbe | None = None,
                 record: bool = True, wall_time: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.plan = plan
        self.clock = clock or SystemClock()
        self.on_event = on_event
        self.policy = policy or BackoffPolicy()
        self.probe = probe or HttpHealthProbe()
        self.record = record
        self.wall_time = wall_time
        self.trackers: dict[str, HealthTracker] = {}
        self._engine_restarts: dict[str, int] = {}
        self._drift_reported: set[str] = set()

    # ----------------------------------------------------------------------------- events
    def _emit(self, instance: str, kind: EventKind, detail: str = "") -> None:
        event = SupervisorEvent(self.wall_time(), self.plan.profile, instance, kind, detail)
        if self.record:
            append_event(RecordedEvent(event.at, event.profile, instance, kind, detail))
        if self.on_event is not None:
            self.on_event(event)

    # ----------------------------------------------------------------------------- one round
    def tick(self) -> bool:
        """Probe every planned instance once and restart those that are due.  Returns False (and
        does nothing) while an apply or down of the profile holds its lock."""
        try:
            with profile_lock(self.plan.profile, purpose="supervisor round"):
                self._round()
        except ProfileBusy:
            return False
        return True

    def _round(self) -> None:
        observed = {o.name: o for o in self.backend.list(self.plan.profile) if not o.slot}
        for inst in self.plan.instances:
            self._check(inst, observed.get(inst.name))
        reap_children()

    def _check(self, inst: InstancePlan, obs: ObservedInstance | None) -> None:
        now = self.clock.monotonic()
        tracker = self.trackers.get(inst.name)
        if tracker is None:
            tracker = self.trackers[inst.name] = HealthTracker(self.policy)
            if obs is not None and obs.started_at is not None:
                # Start-up grace counts from the instance's real start, not from when we first
                # looked: an instance that has been broken for an hour is not "starting".
                age = max(0.0, self.wall_time() - obs.started_at.timestamp())
                tracker.started(now - age)
        before = tracker.phase

        if obs is None:
            tracker.record(False, now, exited=True, error="missing")
            if before != "down":
                self._emit(inst.name, "missing", "no container or process for this instance")
        elif obs.spec_hash != inst.spec_hash:
            if inst.name not in self._drift_reported:
                self._drift_reported.add(inst.name)
                self._emit(inst.name, "drifted", "differs from the profile; run `tei-manager apply` (left alone)")
            return
        elif obs.state == "restarting":
            return  # the engine's restart policy is at work; do not race it
        else:
            self._drift_reported.discard(inst.name)
            previous = self._engine_restarts.get(inst.name)
            self._engine_restarts[inst.name] = obs.engine_restarts
            if previous is not None and obs.engine_restarts > previous:
                tracker.started(now)
                self._emit(inst.name, "engine-restarted", f"restarted by the engine ({obs.engine_restarts} in all)")
            if obs.state == "running":
                result = self.probe.health(inst.bind, inst.host_port, inst.health_path, timeout_s=3.0)
                tracker.record(result.ok, now, error=None if result.ok else result.describe())
                if tracker.phase == "healthy" and before != "healthy":
                    self._emit(inst.name, "healthy", result.describe())
                elif tracker.phase == "unhealthy" and before != "unhealthy":
                    self._emit(inst.name, "unhealthy",
                               f"{tracker.consecutive_failures} failed probes: {tracker.last_error}")
            else:
                why = "killed by the out-of-memory killer" if obs.oom_killed else (
                    f"exit code {obs.exit_code}" if obs.exit_code is not None else obs.state)
                tracker.record(False, now, exited=True, error=why)
                if before != "down":
                    self._emit(inst.name, "exited", why)

        if tracker.due(now):
            self._restart(inst, obs, tracker, now)

    def _restart(self, inst: InstancePlan, obs: ObservedInstance | None, tracker: HealthTracker, now: float) -> None:
        self._emit(inst.name, "restarting", tracker.last_error or "")
        try:
            if obs is None:
                # Gone entirely (removed by hand): recreate it from the plan.
                self.backend.prepare(inst)
                created = self.backend.create(inst)
                self.backend.start(created)
            else:
                self.backend.restart(obs, timeout_s=STOP_GRACE_S)
        except BackendError as exc:
            tracker.restarted(now)  # failed attempts back off too
            tracker.phase = "down"
            tracker.restarts -= 1  # ...but only restarts that happened are counted
            self._emit(inst.name, "restart-failed", exc.render())
            return
        tracker.restarted(now)
        self._engine_restarts.pop(inst.name, None)
        self._emit(inst.name, "restarted", f"restart {tracker.restarts} by the supervisor")

    # ----------------------------------------------------------------------------- loop and views
    def run(self, stop: threading.Event, *, interval_s: float = 5.0) -> None:
        """Tick every `interval_s` seconds until `stop` is set.  Errors of one round (engine
        briefly unreachable) are reported as events and the loop goes on."""
        while not stop.is_set():
            try:
                self.tick()
            except BackendError as exc:
                self._emit("*", "restart-failed", f"probe round failed: {exc.render()}")
            except Exception as exc:  # noqa: BLE001 - an engine hiccup (connection reset) must not end supervision
                self._emit("*", "restart-failed", f"probe round failed: {type(exc).__name__}: {exc}")
            stop.wait(interval_s)

    def snapshot(self) -> list[InstanceHealth]:
        now = self.clock.monotonic()
        rows = []
        for inst in self.plan.instances:
            t = self.trackers.get(inst.name)
            if t is None:
                rows.append(InstanceHealth(inst.name, "unknown", 0, 0, None, None))
                continue
            wait = None
            if t.phase in ("unhealthy", "down"):
                wait = max(0.0, t.next_restart_at() - now) if t.last_restart_at is not None else 0.0
            rows.append(InstanceHealth(inst.name, t.phase, t.consecutive_failures, t.restarts, t.last_error, wait))
        return rows


def _zombie_children() -> list[int]:
    """Our exited-but-unreaped children (Linux /proc; an empty list elsewhere)."""
    pids: list[int] = []
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rpartition(")")[2].split()[0] == "Z":
                pids.append(int(pid))
    return pids


def reap_children() -> None:
    """Collect the exit status of every child of ours that has exited.

    Children the process backend started are reaped through their `Popen` (which keeps the exit
    code for `status`); any other exited child is reaped directly.
    """
    from tei_manager.backends import process  # the registry of the children it started

    for pid in _zombie_children():
        child = process._CHILDREN.get(pid)
        if child is not None:
            child.poll()
            continue
        with contextlib.suppress(ChildProcessError):  # already reaped by someone else
            os.waitpid(pid, os.WNOHANG)
