"""The TUI's single door to the services the CLI uses: probe, planner, orchestrator, backends.

Nothing here decides anything the CLI does not: backends and plans come from tei_manager.services
(what `tei-manager apply` uses), diffs from `core.diff.diff`,
applies, teardowns and status rows from `tei_manager.orchestrator`, host facts from
`probe.probe_host`, instance restart/stop/logs from the `Backend`.  This module
only adapts their results to what the screens show, and adds the one thing only a dashboard
needs: rates from two consecutive gateway scrapes.

Every method blocks (engine calls, NVML, HTTP) and is meant to run in a thread worker.
No textual import here, so it is testable on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from tei_manager import orchestrator, services
from tei_manager.core.addresses import http_url
from tei_manager.core.diff import Action, ObservedInstance, diff
from tei_manager.core.facts import HostFacts
from tei_manager.core.plan import Plan
from tei_manager.errors import BackendError, TeiManagerError
from tei_manager.instance_keys import bearer
from tei_manager.models import fingerprint
from tei_manager.models.fingerprint import Fingerprint
from tei_manager.models.store import FileProgress, ProgressSink, Pulled
from tei_manager.orchestrator import InstanceStatus
from tei_manager.services import Backend
from tei_manager.tui import formatting as fmt
from tei_manager.tui import gateway_stats
from tei_manager.tune.runner import Progress, TuneResult
from tei_manager.tune.session import TuneOptions

Clock = Callable[[], float]


@dataclass(frozen=True)
class ProfileEntry:
    """A YAML file in the profiles directory; `error` when it does not load."""

    path: Path
    name: str
    description: str = ""
    error: str | None = None


@dataclass(frozen=True)
class PlanPreview:
    """What the plan screen shows before anything runs: the plan and its diff, or why not."""

    plan: Plan | None
    actions: tuple[Action, ...] = ()
    error: TeiManagerError | None = None


@dataclass(frozen=True)
class ProgressLine:
    """One orchestrator event as a progress row shows it."""

    instance: str | None
    stage: str
    detail: str = ""
    failed: bool = False
    note: str = ""  # the instance's latest log line while it warms up


def describe_event(event: orchestrator.Event) -> ProgressLine | None:
    """Reduce an orchestrator progress event to a row update (None: nothing to show)."""
    if isinstance(event, orchestrator.InstanceStep):
        return ProgressLine(event.instance, event.step, event.detail)
    if isinstance(event, orchestrator.Preparing):
        share = f" {event.done * 100 // event.total}%" if event.done is not None and event.total else ""
        return ProgressLine(event.instance, "preparing", f"{event.message}{share}")
    if isinstance(event, orchestrator.WaitingHealthy):
        detail = f"{event.elapsed_s:.0f}/{event.timeout_s:.0f} s, {event.probe}"
        return ProgressLine(event.instance, "waiting", detail, note=event.last_log or "")
    if isinstance(event, orchestrator.RollingBack):
        return ProgressLine(None, "rolling back", event.reason, failed=True)
    return None  # ActionsPlanned is already on screen; ApplyFinished arrives as the result


@dataclass(frozen=True)
class PullLine:
    """One file of a model being pulled before the apply starts instances, as its row shows it."""

    key: str  # "<model key>/<file>": the row
    model: str
    file: str
    progress: str  # "45%  12.1/26.9 MiB", "done  26.9 MiB"
    finished: bool


def describe_pull(event: FileProgress) -> PullLine | None:
    """A pull progress event as a row update (None: a model-level event without a file)."""
    if not event.file:
        return None
    finished = event.total is not None and event.done >= event.total
    if finished:
        progress = f"done  {_size(event.done)}"
    elif event.total:
        progress = f"{event.done * 100 // event.total}%  {_size(event.done)}/{_size(event.total)}"
    else:
        progress = _size(event.done)
    return PullLine(f"{event.model}/{event.file}", event.model, event.file, progress, finished)


def _size(n: int) -> str:
    return fmt.mib(n / 2**20) if n >= 2**20 else f"{n / 1024:.1f} KiB"


class TuiServices:
    """Blocking calls into the real services; one per app.

    `clock` is injectable so that snapshot tests can freeze uptimes and scrape intervals.
    """

    def __init__(
        self,
        *,
        profiles_dir: Path,
        backend: str = "auto",
        gateway_url: str | None = "http://127.0.0.1:8080",
        clock: Clock = time.time,
        http_timeout_s: float = 2.0,
    ) -> None:
        self.profiles_dir = Path(profiles_dir)
        self.backend_choice = backend
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self.clock = clock
        self._readers: list[Backend] | None = None
        self._readers_lock = threading.Lock()
        self._http = httpx.Client(timeout=http_timeout_s)
        self._last_scrape: gateway_stats.Scrape | None = None
        self._scrape_lock = threading.Lock()
        self._running_profiles: set[str] = set()
        self._quota_cache: dict[Path, tuple[float, str, dict[str, float]]] = {}

    def close(self) -> None:
        self._http.close()
        with self._readers_lock:
            for backend in self._readers or []:
                backend.close()
            self._readers = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    # -- host ------------------------------------------------------------------------------
    def probe(self) -> HostFacts:
        # Looked up at call time, like `live_plan` does: one probe for the overview and the plan.
        from tei_manager import probe as host_probe

        return host_probe.probe_host()

    # -- engines ---------------------------------------------------------------------------
    def readers(self) -> list[Backend]:
        """The backends `status` reads (opened once: connecting to Docker takes a while)."""
        with self._readers_lock:
            if self._readers is None:
                self._readers = services.open_readers(self.backend_choice)
            return self._readers

    def _backend_named(self, name: str) -> Backend:
        for backend in self.readers():
            if backend.name == name:
                return backend
        raise BackendError(f"the {name} backend is not available", where=name,
                           fix="start the TUI with the --backend that runs this instance")

    def _observed(self, row: InstanceStatus) -> tuple[Backend, ObservedInstance]:
        backend = self._backend_named(row.backend)
        for obs in backend.list(row.profile):
            if obs.name == row.name and obs.slot == row.slot:
                return backend, obs
        raise BackendError("the instance no longer exists", where=row.name,
                           fix="it may have been removed meanwhile; the overview refreshes by itself")

    # -- profiles and plans ----------------------------------------------------------------
    def _profile_paths(self) -> list[Path]:
        return sorted([*self.profiles_dir.glob("*.yaml"), *self.profiles_dir.glob("*.yml")])

    def profiles(self) -> list[ProfileEntry]:
        """Every `*.yaml`/`*.yml` in the profiles directory, loaded so that broken ones say why."""
        from tei_manager.profiles import load_profile

        entries = []
        for path in self._profile_paths():
            try:
                profile = load_profile(path)
            except TeiManagerError as exc:
                entries.append(ProfileEntry(path=path, name=path.stem, error=_problems(exc)))
                continue
            entries.append(ProfileEntry(path=path, name=profile.name, description=profile.description))
        return entries

    def preview(self, path: Path) -> PlanPreview:
        """Plan against the live host and diff against what runs: all the plan screen shows.

        Planned exactly as `tei-manager apply` plans, on the backend apply would use for this
        profile, so the diff shown is the diff apply will act on.
        """
        try:
            facts = self.probe()
            target = services.open_target(self.backend_choice, services.load(path).name, facts=facts)
            try:
                plan = services.live_plan(path, target, facts)
                actions = tuple(diff(plan, target.backend.list(plan.profile)))
            finally:
                target.close()
        except TeiManagerError as exc:
            return PlanPreview(plan=None, error=exc)
        return PlanPreview(plan=plan, actions=actions)

    # -- running things --------------------------------------------------------------------
    def apply(self, path: Path, plan: Plan, on_event: orchestrator.EventSink, *,
              on_pull: ProgressSink | None = None, on_pulled: Callable[[list[Pulled]], None] | None = None,
              accept_embedding_change: bool = False) -> orchestrator.ApplyResult:
        """What `tei-manager apply` does, on the backend it would pick: the profile's missing models
        are pulled first (`on_pull` sees every file's bytes), so the health gates time start-up
        only; then the apply, guarded by the deployments' embedding fingerprints (a drift beyond
        the threshold raises EmbeddingDriftError unless `accept_embedding_change`)."""
        pulled = services.pull_missing(path, on_progress=on_pull)
        if on_pulled is not None:
            on_pulled(pulled)
        target = services.open_target(self.backend_choice, plan.profile, facts=self.probe())
        try:
            return services.apply_guarded(path, plan, target.backend, on_event=on_event,
                                          accept_embedding_change=accept_embedding_change)
        finally:
            target.close()

    def tune(self, path: Path, options: TuneOptions, progress: Progress) -> TuneResult:
        """`tei-manager tune` on the backend `apply` would pick (trial instances only; live ones untouched)."""
        return services.tune_profile(path, options, backend=self.backend_choice, progress=progress)

    def write_tuning(self, path: Path, result: TuneResult, date: str) -> list[str]:
        """`tune --write`: the chosen values into the profile file; the deployments written."""
        from tei_manager.tune import report, writeback

        written = []
        for dep in result.deployments:
            if dep.recommended is not None:
                writeback.write(path, dep.request.deployment, dep.recommended,
                                report.write_comment(dep, result.slo_p99_ms, date))
                written.append(dep.request.deployment)
        return written

    def down(self, profile: str) -> list[str]:
        """The orchestrator's down on every backend that runs instances of `profile`."""
        removed: list[str] = []
        for backend in self.readers():
            removed += orchestrator.down(profile, backend)
        return removed

    def instances(self) -> list[InstanceStatus]:
        """`tei-manager status`, live instances only (temporary apply copies are not rows)."""
        rows = [row for row in orchestrator.status(self.readers()) if row.slot == ""]
        self._running_profiles = {row.profile for row in rows}
        return rows

    def fingerprints(self, profiles: Iterable[str]) -> dict[tuple[str, str], Fingerprint]:
        """Each deployment's recorded embedding fingerprint, by (profile, deployment): its age and
        the last change an apply let through, as `tei-manager status` shows them."""
        return {(profile, found.deployment): found
                for profile in sorted(set(profiles)) for found in fingerprint.recorded(profile)}

    def restart(self, row: InstanceStatus) -> None:
        backend, obs = self._observed(row)
        backend.restart(obs)

    def stop(self, row: InstanceStatus) -> None:
        backend, obs = self._observed(row)
        backend.stop(obs)

    def logs(self, row: InstanceStatus, *, tail: int = 200) -> list[str]:
        backend, obs = self._observed(row)
        return list(backend.logs(obs, tail=tail))

    def info(self, row: InstanceStatus) -> dict[str, Any]:
        """The instance's own TEI `/info` (straight from the instance, not through the gateway)."""
        if row.port is None:
            raise BackendError("the instance publishes no port", where=row.name)
        try:
            # Always with the instance's key: an unprotected instance ignores it.
            response = self._http.get(f"{http_url(row.bind, row.port)}/info", headers=bearer(row.profile, row.name))
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BackendError(f"/info did not answer: {exc}", where=row.name,
                               fix="check the instance's health and log") from exc
        return body if isinstance(body, dict) else {"info": body}

    # -- gateway ---------------------------------------------------------------------------
    def scrape_gateway(self) -> gateway_stats.GatewayStats:
        """Scrape the gateway's /metrics and compare it with the previous scrape.

        Raises GatewayUnavailable when `serve` is not running (or no URL is configured).
        """
        if self.gateway_url is None:
            raise GatewayUnavailable("gateway not running (no --gateway-url)")
        try:
            response = self._http.get(f"{self.gateway_url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"gateway not running at {self.gateway_url}") from exc
        current = gateway_stats.parse(response.text, at=self.clock())
        with self._scrape_lock:
            previous, self._last_scrape = self._last_scrape, current
        return gateway_stats.compare(previous, current, self._quotas())

    def _quotas(self) -> dict[str, float]:
        """Requests-per-second quotas of the tenants of the profiles that run now.

        The gateway enforces quotas but does not export them; they are read from the profile
        files (re-read only when a file changes) so that "quota use" can be shown.
        """
        from tei_manager.profiles import load_profile

        quotas: dict[str, float] = {}
        for path in self._profile_paths():
            try:
                mtime = path.stat().st_mtime
                cached = self._quota_cache.get(path)
                if cached is None or cached[0] != mtime:
                    profile = load_profile(path)
                    rps = {name: t.quota.requests_per_second for name, t in profile.tenants.items()
                           if t.quota.requests_per_second}
                    cached = self._quota_cache[path] = (mtime, profile.name, rps)
            except (OSError, TeiManagerError):
                continue
            if cached[1] in self._running_profiles:
                quotas.update(cached[2])
        return quotas


def _problems(exc: TeiManagerError) -> str:
    """What is wrong with a profile, without the file name the list already shows."""
    issues = getattr(exc, "issues", None)
    if issues:
        return "; ".join(f"{issue.path or '<root>'}: {issue.message}" for issue in issues)
    return exc.what


class GatewayUnavailable(Exception):
    """The gateway's /metrics did not answer: the overview says so instead of showing zeros."""
