"""An in-memory backend for tests and UI work: no engine, no processes, no ports.

It keeps instances in a dict and lets a test decide what goes wrong:

    fake = FakeBackend()
    fake.fail_start["b"] = "could not select device driver"   # start() raises BackendError
    fake.crash_on_start["c"] = 137          # a new instance's first start dies (OOM in its logs)
    fake.unhealthy.add("d")                                      # /health fails while running
    fake.missing_images.add("img:1")                             # prepare() fails
    fake.kill("a")                                               # the instance dies (exit 137)

Pair it with `FakeHealthProbe(fake)` for `orchestrator.apply/status` and `Supervisor`, and with
`check_ports=False` for apply.  `calls` records every operation, in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tei_manager.backends.base import Backend, ProgressFn
from tei_manager.core.diff import ObservedInstance, RunState
from tei_manager.core.plan import HEALTH_PATH, InstancePlan
from tei_manager.errors import BackendError
from tei_manager.health import InfoAnswer, ProbeResult


@dataclass
class _Record:
    plan: InstancePlan
    slot: str
    state: RunState = "created"
    started_at: datetime | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    engine_restarts: int = 0
    starts: int = 0
    logs: list[str] = field(default_factory=list)


class FakeBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        self.records: dict[str, _Record] = {}
        self.fail_start: dict[str, str] = {}
        self.crash_on_start: dict[str, int] = {}
        self.unhealthy: set[str] = set()
        self.missing_images: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    # ----------------------------------------------------------------------------- test controls
    def kill(self, name: str, exit_code: int = 137) -> None:
        for rec in self.records.values():
            if rec.plan.name == name and rec.slot == "" and rec.state == "running":
                rec.state, rec.exit_code = "exited", exit_code
                rec.logs.append(f"killed with exit code {exit_code}")

    def live(self, name: str) -> ObservedInstance | None:
        return next((o for o in self.list() if o.name == name and not o.slot), None)

    # ----------------------------------------------------------------------------- Backend
    def _observe(self, handle: str) -> ObservedInstance:
        rec = self.records[handle]
        return ObservedInstance(
            name=rec.plan.name, profile=rec.plan.profile, backend=self.name, handle=handle, state=rec.state,
            spec_hash=rec.plan.spec_hash, plan=rec.plan, slot=rec.slot, bind=rec.plan.bind,
            port=rec.plan.host_port, started_at=rec.started_at, exit_code=rec.exit_code,
            oom_killed=rec.oom_killed, engine_restarts=rec.engine_restarts,
        )

    def list(self, profile: str | None = None) -> list[ObservedInstance]:
        return [self._observe(h) for h, r in self.records.items() if profile is None or r.plan.profile == profile]

    def refresh(self, obs: ObservedInstance) -> ObservedInstance | None:
        return self._observe(obs.handle) if obs.handle in self.records else None

    def prepare(self, instance: InstancePlan, on_progress: ProgressFn | None = None) -> None:
        self.calls.append(("prepare", instance.name))
        if instance.image in self.missing_images:
            raise BackendError(f"image {instance.image} not found locally and could not be pulled",
                               where=instance.name, fix="build or load the image")

    def _get(self, obs: ObservedInstance) -> _Record:
        if obs.handle not in self.records:
            raise BackendError("instance no longer exists", where=obs.name)
        return self.records[obs.handle]

    def create(self, instance: InstancePlan, *, slot: str = "") -> ObservedInstance:
        self.calls.append(("create", instance.name + (f".{slot}" if slot else "")))
        if any(r.plan.profile == instance.profile and r.plan.name == instance.name and r.slot == slot
               for r in self.records.values()):
            raise BackendError("name already in use", where=instance.name)
        handle = f"fake-{next(self._ids)}"
        self.records[handle] = _Record(instance, slot)
        return self._observe(handle)

    def start(self, obs: ObservedInstance) -> ObservedInstance:
        self.calls.append(("start", obs.name))
        rec = self._get(obs)
        if obs.name in self.fail_start:
            raise BackendError(self.fail_start[obs.name], where=obs.name)
        rec.started_at = datetime.now(timezone.utc)
        rec.starts += 1
        if obs.name in self.crash_on_start and rec.starts == 1:
            rec.state, rec.exit_code = "exited", self.crash_on_start[obs.name]
            rec.logs.append("CUDA error: out of memory")
        else:
            rec.state, rec.exit_code = "running", None
        return self._observe(obs.handle)

    def stop(self, obs: ObservedInstance, *, timeout_s: float = 10.0) -> ObservedInstance:
        self.calls.append(("stop", obs.name))
        rec = self._get(obs)
        if rec.state == "running":
            rec.state, rec.exit_code = "exited", 0
        return self._observe(obs.handle)

    def remove(self, obs: ObservedInstance) -> None:
        self.calls.append(("remove", obs.name + (f".{obs.slot}" if obs.slot else "")))
        self.records.pop(obs.handle, None)

    def rename(self, obs: ObservedInstance, slot: str) -> ObservedInstance:
        self.calls.append(("rename", f"{obs.name}->{slot or 'live'}"))
        self._get(obs).slot = slot
        return self._observe(obs.handle)

    def logs(self, obs: ObservedInstance, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        yield from self._get(obs).logs[-tail:]

    def pids(self, obs: ObservedInstance) -> set[int]:
        return set()


class FakeHealthProbe:
    """Answers /health and /info from a FakeBackend's records, matched by port."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    def _running(self, port: int) -> _Record | None:
        return next((r for r in self.backend.records.values() if r.plan.host_port == port and r.state == "running"),
                    None)

    def health(self, bind: str, port: int, path: str = HEALTH_PATH, *, timeout_s: float = 2.0) -> ProbeResult:
        rec = self._running(port)
        if rec is None:
            return ProbeResult(False, error="connection refused (not listening yet?)")
        if rec.plan.name in self.backend.unhealthy:
            return ProbeResult(False, status_code=503)
        return ProbeResult(True, status_code=200)

    def info(self, bind: str, port: int, *, headers: Mapping[str, str] | None = None) -> InfoAnswer:
        rec = self._running(port)
        if rec is None:
            return InfoAnswer(None)
        return InfoAnswer(200, {"model_id": rec.plan.model.hub_id, "served_model_name": rec.plan.served_model_name})


__all__ = ["FakeBackend", "FakeHealthProbe"]
