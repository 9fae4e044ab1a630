"""Apply a Plan through a Backend: health-gated, idempotent, rolled back on failure.

UI-free: progress is reported as typed events to an `on_event` callback (the CLI renders them
with rich, the TUI with widgets).  Public API:

    apply(plan, backend, *, on_event=None, timeout_s=600.0) -> ApplyResult
    down(profile, backend, *, on_event=None) -> list[str]
    status(backends, profile=None, *, probe_health=True) -> list[InstanceStatus]

Apply semantics (docs/operations.md):

1. Read what runs (`backend.list(profile)`) and `diff()` it against the plan by spec hash.
   Nothing to change: return at once (a few /health probes for the table).
2. Preflight, before touching anything: every image present (pulled when possible) and every
   new host port free.  A failure here leaves the engine exactly as it was.
3. Per instance, in plan order: `create` starts a new one and waits until /health answers 200
   and /info names the expected model; `replace` keeps the old one aside (stopped and renamed
   to slot "old") while the new one starts on the same port, or starts the new one first
   (slot "next") when its port differs; instances the profile no longer has are stopped.
4. Everything healthy: the kept-aside copies are removed.  Any failure: every step is undone in
   reverse (new instances removed, old ones renamed back and restarted) and ApplyError is raised
   naming the instance, the cause (engine error, exit code, OOM, last log lines) and the fix.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tei_manager.backends.base import Backend, Converging, HostPids, SlotRenaming
from tei_manager.core.diff import Action, ObservedInstance, diff
from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.errors import ApplyError, BackendError, TeiManagerError
from tei_manager.health import Clock, HealthProbe, HttpHealthProbe, ProbeResult, SystemClock
from tei_manager.instance_keys import instance_headers
from tei_manager.probe import gpu_memory_by_pid
from tei_manager.state import ProfileBusy, profile_lock, supervisor_restarts

DEFAULT_TIMEOUT_S = 600.0
#: Called with each new instance once it is healthy; raising rolls the apply back.
HealthyHook = Callable[[InstancePlan], None]
_OOM_LOG = re.compile(r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|OutOfMemoryError|CUDA OOM", re.IGNORECASE)


# ------------------------------------------------------------------------------------------ events
@dataclass(frozen=True)
class ActionsPlanned:
    """The diff: what apply is about to do (all `keep` means nothing will change)."""

    profile: str
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Preparing:
    """A long preparation step, e.g. an image pull; `done`/`total` in bytes when known."""

    instance: str
    message: str
    done: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class InstanceStep:
    """One lifecycle step of one instance: creating, starting, stopping, removing, healthy, ..."""

    instance: str
    step: str
    detail: str = ""


@dataclass(frozen=True)
class WaitingHealthy:
    """Still waiting for an instance to answer /health; `last_log` shows download/warm-up progress."""

    instance: str
    elapsed_s: float
    timeout_s: float
    probe: str
    last_log: str | None = None


@dataclass(frozen=True)
class RollingBack:
    """Apply failed; `reason` is the error; undo steps follow as InstanceStep events."""

    reason: str


@dataclass(frozen=True)
class ApplyFinished:
    changed: bool
    duration_s: float


Event = ActionsPlanned | Preparing | InstanceStep | WaitingHealthy | RollingBack | ApplyFinished
EventSink = Callable[[Event], None]


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class InstanceStatus:
    """One row of `tei-manager status` (and of the TUI's instance table)."""

    name: str
    profile: str
    backend: str
    tenant: str
    model: str
    runtime: str
    device: str
    bind: str
    port: int | None
    state: str
    health: str  # "healthy", "unhealthy: <why>", "starting", "-" (not running)
    started_at: datetime | None
    restarts: int
    gpu_memory_mib: int | None
    spec_hash: str | None
    slot: str = ""
    pid: int | None = None
    deployment: str = ""  # the profile's deployment this instance is (a replica of)

    @property
    def address(self) -> str:
        return f"{self.bind}:{self.port}" if self.port else "-"

    def uptime_s(self, now: datetime | None = None) -> float | None:
        if self.started_at is None or self.state != "running":
            return None
        return ((now or datetime.now(timezone.utc)) - self.started_at).total_seconds()


@dataclass(frozen=True)
class ApplyResult:
    profile: str
    actions: tuple[Action, ...]
    changed: bool
    duration_s: float
    instances: tuple[InstanceStatus, ...] = field(default_factory=tuple)


def _emit(on_event: EventSink | None, event: Event) -> None:
    if on_event is not None:
        on_event(event)


# ------------------------------------------------------------------------------------------ preflight
def port_free(bind: str, port: int) -> bool:
    """Can something listen on bind:port right now?  (SO_REUSEADDR: TIME_WAIT does not count.)"""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError:
            return False
    return True


def _preflight(actions: Sequence[Action], observed: Sequence[ObservedInstance], backend: Backend,
               on_event: EventSink | None, *, check_ports: bool = True) -> None:
    """Images and ports, before anything is touched: a failure here changes nothing."""
    ours = {(o.bind, o.port) for o in observed if o.port is not None}
    for action in actions:
        if action.kind not in ("create", "replace") or action.desired is None:
            continue
        inst = action.desired
        _emit(on_event, InstanceStep(inst.name, "preparing", backend.prepare_detail(inst)))

        def progress(message: str, done: int | None, total: int | None, name: str = inst.name) -> None:
            _emit(on_event, Preparing(name, message, done, total))

        backend.prepare(inst, progress)
        if check_ports and (inst.bind, inst.host_port) not in ours and not port_free(inst.bind, inst.host_port):
            raise BackendError(
                f"port {inst.host_port} on {inst.bind} is already in use by another program",
                where=inst.name,
                fix=f"stop what listens there (ss -ltnp 'sport = :{inst.host_port}') or give the deployment "
                "another `port` (or `port: auto`)",
            )


# ------------------------------------------------------------------------------------------ health gate
def _expected_model_ok(info: dict[str, Any], inst: InstancePlan) -> bool:
    names = {inst.served_model_name, inst.model.hub_id, inst.model.model_ref(in_container=True),
             inst.model.model_ref(in_container=False)}
    return info.get("served_model_name") in names or info.get("model_id") in names


def _failure(backend: Backend, obs: ObservedInstance, inst: InstancePlan, what: str) -> BackendError:
    """Turn an instance that died or never became healthy into an error that says why."""
    cause = backend.failure_cause(obs)
    current = backend.refresh(obs) or obs
    if _OOM_LOG.search(cause) and not current.oom_killed:
        estimate = f"~{inst.vram.total_mib} MiB estimated" if inst.vram else "no VRAM estimate"
        tokens = inst.settings.max_batch_tokens
        return BackendError(
            f"ran out of {'GPU ' if inst.gpu is not None else ''}memory during warm-up ({estimate}); {cause}",
            where=inst.name,
            fix=f"lower tuning.max_batch_tokens (now {tokens}) or move the deployment to a GPU with more free memory",
        )
    if current.oom_killed:
        limit = f"{inst.memory_bytes // 2**20} MiB" if inst.memory_bytes else "no limit set"
        cause = cause.replace("killed by the kernel's out-of-memory killer (host memory limit); ", "")
        cause = cause.replace("killed by the kernel's out-of-memory killer (host memory limit)", "")
        return BackendError(
            f"was killed by the out-of-memory killer: it needs more host memory than its limit ({limit})"
            + (f"; {cause}" if cause else ""),
            where=inst.name,
            fix="raise limits.memory, or lower tuning.max_batch_tokens / max_concurrent_requests",
        )
    return BackendError(f"{what}; {cause}", where=inst.name,
                        fix=f"see `tei-manager logs {inst.name}`; check the model, image and runtime flags")


def wait_healthy(backend: Backend, obs: ObservedInstance, inst: InstancePlan, *, timeout_s: float,
                 on_event: EventSink | None = None, clock: Clock | None = None,
                 poll_s: float = 0.5, probe: HealthProbe | None = None) -> ObservedInstance:
    """Until /health answers 200 and /info names the expected model, or fail fast when the
    instance exits, restarts by itself or the timeout passes (BackendError with the cause)."""
    clock = clock or SystemClock()
    probe = probe or HttpHealthProbe()
    started = clock.monotonic()
    restarts_at_start = obs.engine_restarts
    last_report = -10.0
    while True:
        current = backend.refresh(obs)
        if current is None:
            raise BackendError("disappeared while starting (removed by someone else?)", where=inst.name,
                               fix="run apply again")
        if current.state in ("exited", "dead") or current.engine_restarts > restarts_at_start \
                or current.state == "restarting":
            code = f" (exit code {current.exit_code})" if current.exit_code is not None else ""
            raise _failure(backend, current, inst, f"stopped while starting{code}")
        result = probe.health(inst.bind, inst.host_port, inst.health_path, timeout_s=2.0)
        elapsed = clock.monotonic() - started
        if result.ok:
            answer = probe.info(inst.bind, inst.host_port, headers=instance_headers(inst))
            if answer.refused:
                raise BackendError(
                    f"/info answered {answer.status_code}: the instance does not accept the key tei-manager "
                    "holds for it", where=inst.name,
                    fix="remove any API_KEY / --api-key of the deployment's own (env, tuning.extra_args): the "
                        "internal key protects instances (gateway.protect_instances); or another server listens "
                        "on that port",
                )
            info = answer.body
            if info is not None and not _expected_model_ok(info, inst):
                raise BackendError(
                    f"port {inst.host_port} answers for model "
                    f"{info.get('served_model_name') or info.get('model_id')!r}, "
                    f"expected {inst.served_model_name!r}",
                    where=inst.name, fix="another server may be listening on that port; pick another port",
                )
            if info is not None:
                return current
            # /health is up but /info is not: not ready yet (TEI answers /health before it is warm).
            result = ProbeResult(False, error=f"/info answered {answer.status_code}" if answer.status_code
                                 else "/info did not answer")
        if elapsed >= timeout_s:
            raise _failure(backend, current, inst, f"not healthy after {timeout_s:g} s ({result.describe()})")
        if elapsed - last_report >= 1.0:
            last_report = elapsed
            _emit(on_event, WaitingHealthy(inst.name, elapsed, timeout_s, result.describe(),
                                           _last_log_line(backend, current)))
        clock.sleep(poll_s)


def _last_log_line(backend: Backend, obs: ObservedInstance) -> str | None:
    try:
        lines = [line for line in backend.logs(obs, tail=5) if line.strip()]
    except TeiManagerError:
        return None
    except Exception:  # noqa: BLE001 - a log read racing the engine must not fail the wait
        return None
    return lines[-1][-200:] if lines else None


# ------------------------------------------------------------------------------------------ apply
class _Journal:
    """Undo steps of a running apply, run in reverse on failure."""

    def __init__(self, backend: Backend, on_event: EventSink | None, probe: HealthProbe, *,
                 clock: Clock, restore_timeout_s: float) -> None:
        self.backend = backend
        self.on_event = on_event
        self.probe = probe
        self.clock = clock
        self.restore_timeout_s = restore_timeout_s
        self.undo: list[tuple[str, str, Callable[[], None]]] = []
        self.aside: list[list[ObservedInstance]] = []  # old copies to delete on success

    def add(self, instance: str, what: str, fn: Callable[[], None]) -> None:
        self.undo.append((instance, what, fn))

    def rollback(self) -> list[str]:
        problems: list[str] = []
        for instance, what, fn in reversed(self.undo):
            _emit(self.on_event, InstanceStep(instance, "rollback", what))
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest; report what could not be undone
                problems.append(f"{instance}: {what} failed: {exc}")
        return problems


def _remove_new(backend: Backend, cell: list[ObservedInstance]) -> Callable[[], None]:
    def undo() -> None:
        backend.remove(cell[0])
    return undo


def _restore_old(journal: _Journal, cell: list[ObservedInstance], was_running: bool) -> Callable[[], None]:
    def undo() -> None:
        backend = journal.backend
        current = backend.refresh(cell[0]) or cell[0]
        if isinstance(backend, SlotRenaming):
            current = backend.rename(current, "")
        if was_running:
            current = backend.start(current)
            # "As it was before" is only true once the old version answers again; a restore that
            # does not come back is reported as an incomplete rollback instead of passing silently.
            if current.plan is not None:
                wait_healthy(backend, current, current.plan, timeout_s=journal.restore_timeout_s,
                             on_event=journal.on_event, clock=journal.clock, probe=journal.probe)
    return undo


def _set_aside(backend: Backend, journal: _Journal, obs: ObservedInstance,
               stop_timeout_s: float) -> list[ObservedInstance]:
    """Stop `obs` and rename it to slot "old"; undo renames it back and starts it again."""
    was_running = obs.state in ("running", "restarting")
    _emit(journal.on_event, InstanceStep(obs.name, "stopping", "old version kept until the new one is healthy"))
    cell = [obs]
    journal.add(obs.name, "restore the previous instance", _restore_old(journal, cell, was_running))
    if obs.state in ("running", "restarting", "paused"):
        cell[0] = backend.stop(obs, timeout_s=stop_timeout_s)
    if isinstance(backend, SlotRenaming):
        cell[0] = backend.rename(cell[0], "old")
    journal.aside.append(cell)
    return cell


def _replace_in_place(backend: Backend, journal: _Journal, old: ObservedInstance, stop_timeout_s: float) -> None:
    """For a backend without slots: the old version must go before the new one can take its name,
    so a failed replace cannot bring it back (the rollback says so)."""
    _emit(journal.on_event, InstanceStep(old.name, "removing", "previous version (this backend keeps no second copy)"))

    def cannot_restore() -> None:
        raise BackendError(f"the {backend.name} backend keeps no second copy to restore", where=old.name,
                           fix="run `tei-manager apply` again with the previous profile")

    journal.add(old.name, "restore the previous instance", cannot_restore)
    if old.state in ("running", "restarting", "paused"):
        old = backend.stop(old, timeout_s=stop_timeout_s)
    backend.remove(old)


def _start_new(backend: Backend, journal: _Journal, inst: InstancePlan, *, slot: str, timeout_s: float,
               clock: Clock, on_healthy: HealthyHook | None = None) -> list[ObservedInstance]:
    on_event = journal.on_event
    where = f"{inst.runtime} on {inst.device}, {inst.bind}:{inst.host_port}"
    _emit(on_event, InstanceStep(inst.name, "creating", where))
    cell = [backend.create(inst, slot=slot)]
    journal.add(inst.name, "remove the new instance", _remove_new(backend, cell))
    _emit(on_event, InstanceStep(inst.name, "starting"))
    cell[0] = backend.start(cell[0])
    _emit(on_event, InstanceStep(inst.name, "waiting", f"for /health (timeout {timeout_s:g} s)"))
    cell[0] = wait_healthy(backend, cell[0], inst, timeout_s=timeout_s, on_event=on_event, clock=clock,
                           probe=journal.probe)
    _emit(on_event, InstanceStep(inst.name, "healthy"))
    if on_healthy is not None:  # e.g. the embedding fingerprint check; raising rolls the apply back
        on_healthy(inst)
    return cell


def _converge(action: Action, backend: Backend, journal: _Journal, *, timeout_s: float, stop_timeout_s: float,
              clock: Clock, check_ports: bool, on_healthy: HealthyHook | None = None) -> None:
    inst, old = action.desired, action.observed
    if action.kind == "create":
        assert inst is not None
        _start_new(backend, journal, inst, slot="", timeout_s=timeout_s, clock=clock, on_healthy=on_healthy)
    elif action.kind == "replace":
        assert inst is not None and old is not None
        same_port = (old.bind, old.port) == (inst.bind, inst.host_port)
        if not isinstance(backend, SlotRenaming):
            _replace_in_place(backend, journal, old, stop_timeout_s)
            _start_new(backend, journal, inst, slot="", timeout_s=timeout_s, clock=clock, on_healthy=on_healthy)
        elif same_port or (check_ports and not port_free(inst.bind, inst.host_port)):
            # The port is the old instance's: it must stop before the new one can listen.
            _set_aside(backend, journal, old, stop_timeout_s)
            _start_new(backend, journal, inst, slot="", timeout_s=timeout_s, clock=clock, on_healthy=on_healthy)
        else:
            # Make before break: the new one is healthy on its own port before the old one stops.
            cell = _start_new(backend, journal, inst, slot="next", timeout_s=timeout_s, clock=clock,
                              on_healthy=on_healthy)
            _set_aside(backend, journal, old, stop_timeout_s)
            cell[0] = backend.rename(cell[0], "")  # checked above: this backend has slots
    elif action.kind == "remove":
        assert old is not None
        _set_aside(backend, journal, old, stop_timeout_s)


def apply(plan: Plan, backend: Backend, *, on_event: EventSink | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
          stop_timeout_s: float = 10.0, clock: Clock | None = None, probe: HealthProbe | None = None,
          check_ports: bool = True, on_healthy: HealthyHook | None = None) -> ApplyResult:
    """Converge the backend onto `plan`.  Returns what was done; raises BackendError when a
    preflight check fails (nothing touched) and ApplyError when a step failed and was rolled back.

    `probe` answers /health and /info (HTTP by default); `clock` paces the health wait;
    `check_ports=False` skips the host port test (for backends whose instances do not listen
    on this host, such as the fake backend).  `on_healthy(instance)` runs when a new instance has
    passed its health gate, before the apply completes; if it raises, the apply is rolled back
    (tei_manager.models.fingerprint checks that embeddings did not drift)."""
    if isinstance(backend, Converging):  # a cluster converges whole profiles itself (health gate, rollback)
        started = time.monotonic()
        actions = backend.converge(plan, timeout_s=timeout_s, on_event=on_event)
        return ApplyResult(plan.profile, actions, any(a.kind != "keep" for a in actions),
                           time.monotonic() - started, tuple(status(backend, plan.profile, probe_health=False)))
    with _locked(plan.profile, "apply"):
        return _apply(plan, backend, on_event=on_event, timeout_s=timeout_s, stop_timeout_s=stop_timeout_s,
                      clock=clock or SystemClock(), probe=probe or HttpHealthProbe(), check_ports=check_ports,
                      on_healthy=on_healthy)


@contextlib.contextmanager
def _locked(profile: str, purpose: str) -> Iterator[None]:
    try:
        with profile_lock(profile, purpose=purpose):
            yield
    except ProfileBusy as busy:
        raise BackendError(f"profile {profile!r} is being changed by another tei-manager ({busy.holder})",
                           where=profile, fix="wait for it to finish, then run the command again") from None


def _apply(plan: Plan, backend: Backend, *, on_event: EventSink | None, timeout_s: float, stop_timeout_s: float,
           clock: Clock, probe: HealthProbe, check_ports: bool, on_healthy: HealthyHook | None = None) -> ApplyResult:
    begun = time.monotonic()
    observed = backend.list(plan.profile)
    actions = tuple(diff(plan, observed))
    _emit(on_event, ActionsPlanned(plan.profile, actions))
    changed = any(a.changes_something for a in actions)
    if changed:
        leftovers = [a for a in actions if a.kind == "remove" and a.observed is not None and a.observed.slot]
        work = [a for a in actions if a not in leftovers]
        _preflight(work, observed, backend, on_event, check_ports=check_ports)
        # Copies left by an interrupted apply are garbage: clear them first so their names and
        # ports are free.
        for action in leftovers:
            _emit(on_event, InstanceStep(action.name, "removing", action.reason))
            backend.remove(action.observed)  # type: ignore[arg-type]
        # A restored instance was healthy minutes ago with its model cached: the same time budget as
        # a start is generous, and it bounds how long a failed apply can take to hand back.
        journal = _Journal(backend, on_event, probe, clock=clock, restore_timeout_s=timeout_s)
        # Removals first: a deployment renamed in the profile may reuse the port of the old name.
        ordered = [a for a in work if a.kind == "remove"] + [a for a in work if a.kind in ("create", "replace")]
        try:
            for action in ordered:
                _converge(action, backend, journal, timeout_s=timeout_s, stop_timeout_s=stop_timeout_s, clock=clock,
                          check_ports=check_ports, on_healthy=on_healthy)
        except BaseException as exc:  # anything half-done is undone, whatever failed (Ctrl-C included)
            reason = exc.render() if isinstance(exc, TeiManagerError) else f"{type(exc).__name__}: {exc}"
            _emit(on_event, RollingBack(reason))
            problems = journal.rollback()
            where = exc.where if isinstance(exc, TeiManagerError) else None
            what = exc.what if isinstance(exc, TeiManagerError) else (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else reason)
            fix = exc.fix if isinstance(exc, TeiManagerError) else None
            state = ("rolled back: everything is as it was before this apply" if not problems
                     else "rollback incomplete: " + "; ".join(problems))
            raise ApplyError(f"{what} ({state})", where=where, fix=fix) from exc
        for cell in journal.aside:
            _emit(on_event, InstanceStep(cell[0].name, "removing", "previous version"))
            try:
                backend.remove(cell[0])
            except BackendError as exc:  # the new state is healthy; a stale copy is only clutter
                _emit(on_event, InstanceStep(cell[0].name, "warning", f"could not remove the old copy: {exc.what}"))
    duration = time.monotonic() - begun
    _emit(on_event, ApplyFinished(changed, duration))
    rows = status([backend], plan.profile, probe=probe)
    return ApplyResult(plan.profile, actions, changed, duration, tuple(rows))


# ------------------------------------------------------------------------------------------ down
def down(profile: str, backend: Backend, *, on_event: EventSink | None = None,
         stop_timeout_s: float = 10.0) -> list[str]:
    """Stop and remove every instance labelled with `profile` (all slots).  The shared Hugging
    Face cache volume is kept: other profiles use it and re-downloading models is slow."""
    removed: list[str] = []
    with _locked(profile, "down"):
        removed = _down(profile, backend, on_event, stop_timeout_s)
    return removed


def _down(profile: str, backend: Backend, on_event: EventSink | None, stop_timeout_s: float) -> list[str]:
    removed: list[str] = []
    for obs in backend.list(profile):
        label = obs.name + (f" ({obs.slot})" if obs.slot else "")
        _emit(on_event, InstanceStep(obs.name, "removing", obs.slot))
        if obs.state in ("running", "restarting", "paused"):
            obs = backend.stop(obs, timeout_s=stop_timeout_s)
        backend.remove(obs)
        removed.append(label)
    return removed


# ------------------------------------------------------------------------------------------ status
def _health_of(obs: ObservedInstance, probe: HealthProbe) -> str:
    if obs.state != "running" or obs.port is None or obs.bind is None:
        return "-"
    result = probe.health(obs.bind, obs.port, obs.plan.health_path if obs.plan else "/health", timeout_s=1.5)
    if result.ok:
        return "healthy"
    if result.status_code is None and "refused" in (result.error or ""):
        return "starting"
    return f"unhealthy: {result.describe()}"


def status(backends: Backend | Iterable[Backend], profile: str | None = None, *,
           probe_health: bool = True, probe: HealthProbe | None = None) -> list[InstanceStatus]:
    """Every instance the backends run for tei-manager (of one profile when given), with health,
    uptime, restarts (the engine's own plus the supervisor's) and GPU memory (NVML, matched by pid).
    Blocking (HTTP probes, engine calls): the TUI calls it from a worker thread."""
    if isinstance(backends, Backend):
        backends = [backends]
    probe = probe or HttpHealthProbe()
    gpu = gpu_memory_by_pid()  # one NVML read per status call, matched to instances by pid
    rows: list[InstanceStatus] = []
    restarts_cache: dict[str, dict[str, int]] = {}
    for backend in backends:
        for obs in backend.list(profile):
            plan = obs.plan
            if obs.profile not in restarts_cache:
                restarts_cache[obs.profile] = supervisor_restarts(obs.profile)
            memory = None
            if gpu and obs.state == "running" and isinstance(backend, HostPids):
                pids = backend.pids(obs)
                used = [gpu[p] for p in pids if p in gpu]
                memory = sum(used) if used else 0
            rows.append(InstanceStatus(
                name=obs.name,
                profile=obs.profile,
                backend=backend.name,
                tenant=plan.tenant if plan else "?",
                model=plan.served_model_name if plan else "?",
                runtime=plan.runtime if plan else "?",
                device=plan.device if plan else "?",
                bind=obs.bind or "-",
                port=obs.port,
                state=obs.state,
                health=_health_of(obs, probe) if probe_health else "-",
                started_at=obs.started_at,
                restarts=obs.engine_restarts + restarts_cache[obs.profile].get(obs.name, 0),
                gpu_memory_mib=memory,
                spec_hash=obs.spec_hash,
                slot=obs.slot,
                pid=obs.pid,
                deployment=plan.deployment if plan else obs.name,
            ))
    return rows
