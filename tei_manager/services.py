"""The one planning path, and the backend choice, for every command and the TUI.

`plan`, `apply`, `watch`, `serve`, `status`, `down`, `logs` and the TUI come here for the backend
they act on and for the Plan; none of them has its own copy.  `plan` on the live host opens the
backend `apply` would use and plans exactly as `apply` does (ports held by other programs,
our own pids, the backend's capabilities), so the two always agree.

    open_target(choice, profile, options, facts) -> Target      backend for apply/watch/serve
    open_readers(choice, options) -> [Backend]                   backends for status/down/logs
    live_plan(path, target, facts=None) -> Plan                  what apply converges on
    plan_profile(path, backend=..., gpus=..., docker=...) -> Plan   what `plan` prints
    pull_missing(path, on_progress) -> [Pulled]                  models fetched before apply starts instances
    apply_guarded(path, plan, backend, ...) -> ApplyResult      apply, guarded by embedding fingerprints
    tune_profile(path, options, backend=...) -> TuneResult       what `tune` measures (tei_manager.tune)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tei_manager.backends.base import Backend, BackendEntry, HostPids, Options, SlotRenaming
from tei_manager.backends.registry import (
    all_options,
    auto_backend_names,
    auto_capabilities,
    backend_names,
    entries,
    get_entry,
    probe_address,
    try_open,
)
from tei_manager.core.capabilities import Capabilities
from tei_manager.core.facts import HostFacts, normalize_arch
from tei_manager.core.models import Profile
from tei_manager.core.plan import Plan
from tei_manager.core.tuning import Calibration, CalibrationKey, MeasuredPeak
from tei_manager.errors import HostError, PlanError, ProfileError, TeiManagerError
from tei_manager.instance_keys import with_key_ids

if TYPE_CHECKING:
    from collections.abc import Callable

    from tei_manager.tune.runner import Progress, TuneResult
    from tei_manager.tune.session import TuneOptions

if TYPE_CHECKING:
    from tei_manager.models.source import Sized
    from tei_manager.models.store import ProgressSink, Pulled
    from tei_manager.orchestrator import ApplyResult, EventSink

__all__ = [
    "AUTO",
    "Backend",
    "Options",
    "SlotRenaming",
    "Target",
    "all_options",
    "apply_guarded",
    "auto_backend_names",
    "backend_names",
    "close_all",
    "live_plan",
    "open_readers",
    "open_target",
    "plan_profile",
    "profile_name",
    "pull_missing",
    "tune_profile",
]

AUTO = "auto"
GPUS_HELP = ('Plan for another host: "index:name:memory:compute_capability,...", '
             'e.g. "0:NVIDIA L20:46068MiB:8.9,1:NVIDIA L20:46068MiB:8.9".')
_LISTEN = "0A"


def backend_choices() -> tuple[str, ...]:
    return (AUTO, *backend_names())


def check_choice(value: str) -> str:
    """`--backend` as typed -> a known choice; raises HostError naming the choices."""
    lowered = value.lower()
    if lowered not in backend_choices():
        raise HostError(f"unknown backend {value!r}", where="--backend", fix=f"choose {', '.join(backend_choices())}")
    return lowered


# --- host facts --------------------------------------------------------------------------------------


def listening_ports() -> set[int]:
    """TCP ports something listens on, from /proc/net/tcp{,6} (empty where there is no /proc)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def probe(options: Options | None = None) -> HostFacts:
    from tei_manager.probe import probe_host

    return probe_host(probe_address(options or {}))


def profile_name(profile_or_path: str) -> str:
    """`down`/`status` accept a profile file or a bare profile name."""
    path = Path(profile_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from tei_manager.profiles import load_profile

        return load_profile(path).name
    return profile_or_path


def load(path: str | Path) -> Profile:
    from tei_manager.profiles import load_profile

    if not Path(path).exists():
        raise ProfileError("no such profile file", where=str(path),
                           fix="check the path; the examples live in profiles/")
    return load_profile(path)


# --- backends -----------------------------------------------------------------------------------------


@dataclass
class Target:
    """The backend a profile is applied to, and how it was chosen."""

    entry: BackendEntry
    backend: Backend
    auto: bool

    def capabilities(self, facts: HostFacts) -> Capabilities:
        return auto_capabilities(self.entry, facts) if self.auto else self.entry.capabilities(facts)

    def close(self) -> None:
        self.backend.close()


def _choose(choice: str, facts: HostFacts, runs_profile: str | None,
            options: Options) -> tuple[BackendEntry, Backend | None]:
    """The entry `choice` means on this host (opening candidates only when `runs_profile` is given).

    `auto`: the backend that already runs the profile (a profile started on one backend stays
    there, never gets a second copy on another), else the first whose engine answers."""
    if choice != AUTO:
        entry = get_entry(choice)
        return entry, entry.open(options) if runs_profile is not None else None
    candidates = [e for e in entries() if e.auto and e.capabilities(facts).blocked is None]
    if runs_profile is None:
        if not candidates:
            raise HostError("no backend can run instances on this host", where="--backend")
        return candidates[0], None
    opened: list[tuple[BackendEntry, Backend]] = []
    for entry in candidates:
        backend, _why = try_open(entry, options)
        if backend is not None:
            opened.append((entry, backend))
    if not opened:
        raise HostError("no backend can run instances on this host", where="--backend",
                        fix="start a container engine, or install the fallback worker "
                        "(pip install 'tei-manager[worker]')")
    chosen = next(((e, b) for e, b in opened if b.list(runs_profile)), opened[0])
    for _entry, backend in opened:
        if backend is not chosen[1]:
            backend.close()
    return chosen


def open_target(choice: str, profile: str, options: Options | None = None,
                facts: HostFacts | None = None) -> Target:
    """The backend `apply` uses for `profile` (see `_choose` for what `auto` means)."""
    options = options or {}
    facts = facts or probe(options)
    entry, backend = _choose(check_choice(choice), facts, profile, options)
    assert backend is not None
    return Target(entry=entry, backend=backend, auto=choice == AUTO)


def close_all(backends: Iterable[Backend]) -> None:
    for backend in backends:
        backend.close()


def open_readers(choice: str, options: Options | None = None) -> list[Backend]:
    """Backends `status`/`down`/`logs` read: the one named, or every one that opens (`auto`)."""
    options = options or {}
    choice = check_choice(choice)
    if choice != AUTO:
        return [get_entry(choice).open(options)]
    found = [try_open(entry, options)[0] for entry in entries() if entry.auto]
    return [b for b in found if b is not None]


# --- planning ------------------------------------------------------------------------------------------


def _with_cpu_note(exc: TeiManagerError, facts: HostFacts) -> TeiManagerError:
    if not facts.gpus and facts.nvml_error:
        exc.what = (f"{exc.what}\n  (CPU-only host: NVML not available ({facts.nvml_error}); "
                    "GPU placements cannot be planned here - pass --gpus to plan for another host)")
    return exc


def measured_memory() -> tuple[Calibration, str | None]:
    """Tune's measured peaks for the planner, and a warning when the store cannot be read (planning
    then falls back to the estimates: a damaged calibration file must never stop `plan` or `apply`)."""
    from tei_manager.tune import calibration

    try:
        stored = calibration.load()
    except calibration.CalibrationError as exc:
        return {}, f"measured peaks not used: {exc.render()}"
    return {CalibrationKey(*m.key): MeasuredPeak(m.peak_bytes, m.measured_at) for m in stored}, None


def plan_with(profile: Profile, facts: HostFacts, capabilities: Capabilities, *, source: str | None,
              observed_ports: Iterable[int] = (), own_pids: Iterable[int] = ()) -> Plan:
    from tei_manager.core.planner import plan

    measured, problem = measured_memory()
    sized = _sized_models(profile)
    try:
        result = plan(profile, facts, observed_ports=observed_ports, source=source, own_pids=own_pids,
                      capabilities=capabilities, calibration=measured, sized_models=sized.infos)
    except TeiManagerError as exc:
        raise _with_cpu_note(exc, facts) from None
    numbers = {key: origin.replace("files", sized.where.get(key, "files")) for key, origin in
               result.model_numbers.items()}
    warnings = (*result.warnings, problem) if problem is not None else result.warnings
    return result.model_copy(update={"model_numbers": numbers, "warnings": warnings})


def _sized_models(profile: Profile) -> Sized:
    """Numbers read from the models' own files (tei_manager.models.source); a model nothing else
    describes and whose files cannot be read is refused here, with the reason."""
    from tei_manager.models.source import described, size_models, sizing_failure

    sized = size_models(profile)
    for key, problem in sized.problems.items():
        if not described(profile.models[key]):
            raise sizing_failure(key, profile.models[key], problem)
    return sized


def live_plan(path: str | Path, target: Target, facts: HostFacts | None = None) -> Plan:
    """What `apply` converges on: the live host, the target's capabilities, the ports other programs
    hold (`port: auto` skips them but never moves our own instances) and our own pids (their VRAM
    is not someone else's)."""
    profile = load(path)
    if target.entry.plan is not None:  # a cluster: the profile describes where instances run
        return target.entry.plan(profile, str(path))
    facts = facts or probe()
    ours = target.backend.list(profile.name)
    own_ports = {o.port for o in ours if o.port is not None}
    own_pids: set[int] = set()
    if isinstance(target.backend, HostPids):
        for obs in ours:
            own_pids |= target.backend.pids(obs)
    plan = plan_with(profile, facts, target.capabilities(facts), source=str(path),
                     observed_ports=listening_ports() - own_ports, own_pids=own_pids)
    return with_key_ids(plan)


def plan_profile(path: str | Path, *, backend: str = AUTO, options: Options | None = None,
                 gpus: str | None = None, docker: bool | None = None, cpu_arch: str | None = None) -> Plan:
    """What `plan` prints.  On the live host (no --gpus, --docker/--no-docker or --cpu-arch) it is
    exactly `live_plan` on the backend `apply` would pick; otherwise the described host, planned
    without touching any engine."""
    from tei_manager.probe import host_facts

    options = options or {}
    choice = check_choice(backend)
    profile = load(path)
    remote = get_entry(choice).plan if choice != AUTO else None
    if remote is not None and gpus is None and cpu_arch is None:  # a cluster: planned without opening it
        return remote(profile, str(path))
    try:
        facts = host_facts(gpus, docker=docker, docker_url=probe_address(options))
        if cpu_arch is not None:
            facts = facts.model_copy(update={"cpu_arch": normalize_arch(cpu_arch)})
    except ValueError as exc:
        # A PlanError rather than a click usage error: same exit code 2, printed like every other error.
        raise PlanError(str(exc), where="--cpu-arch" if cpu_arch and "architecture" in str(exc) else "--gpus",
                        fix=GPUS_HELP) from None
    if gpus is None and docker is None and cpu_arch is None:
        target = open_target(choice, profile.name, options, facts)
        try:
            return live_plan(path, target, facts)
        finally:
            target.close()
    entry, _ = _choose(choice, facts, None, options)
    caps = auto_capabilities(entry, facts) if choice == AUTO else entry.capabilities(facts)
    return plan_with(profile, facts, caps, source=str(path))


def pull_missing(path: str | Path, on_progress: ProgressSink | None = None) -> list[Pulled]:
    """What `apply` does before starting instances: fetch the profile's hub models that are not yet
    in the cache the instances mount, so that health gates time start-up, not downloads.  Nothing
    when the cache is a Docker volume (instances then download for themselves)."""
    from tei_manager.models.store import missing, pull

    profile = load(path)
    keys = missing(profile)
    return pull(profile, keys=keys, on_progress=on_progress) if keys else []


def apply_guarded(path: str | Path, plan: Plan, backend: Backend, *, on_event: EventSink | None = None,
                  timeout_s: float | None = None, accept_embedding_change: bool = False) -> ApplyResult:
    """What `apply` does once the models are in place: the orchestrator's apply, with every new
    instance of a deployment whose computation changed checked against its embedding fingerprint
    (EmbeddingDriftError rolls the apply back), and fingerprints recorded for deployments that
    have none yet.  The CLI and the TUI both apply through here."""
    from tei_manager import orchestrator
    from tei_manager.models.fingerprint import FingerprintGuard

    guard = FingerprintGuard.for_profile(load(path), accept_change=accept_embedding_change)
    result = orchestrator.apply(plan, backend, on_event=on_event, on_healthy=guard.check,
                                timeout_s=orchestrator.DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    guard.record(list(plan.instances))  # first healthy: the fingerprint later applies compare with
    return result


# --- tuning --------------------------------------------------------------------------------------------


def tune_profile(path: str | Path, options: TuneOptions, *, backend: str = AUTO, backend_options: Options | None = None,
                 progress: Progress | None = None, on_note: Callable[[str], None] | None = None) -> TuneResult:
    """What `tune` measures: trial instances of the profile's deployments, planned exactly as `apply`
    plans them (same backend choice, device, image and limits) and started through that backend."""
    from tei_manager.tune import session

    backend_options = backend_options or {}
    profile = load(path)
    facts = probe(backend_options)
    target = open_target(backend, profile.name, backend_options, facts)
    try:
        plan = live_plan(path, target, facts)
        return session.run(profile, plan, target.backend, options, progress=progress, on_note=on_note)
    finally:
        target.close()
