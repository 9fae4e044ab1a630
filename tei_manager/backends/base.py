"""The contract between the orchestrator and an engine that runs instances.

A small core every backend implements (`Backend`: list, prepare, create, start, stop, remove,
refresh, logs), and optional abilities as separate protocols that the orchestrator and `status`
test for (`SlotRenaming`: keep the old version aside during a replace; `HostPids`: match NVML's
per-process GPU memory).  What a backend can host is declared in its registry entry
(tei_manager.backends.registry), not here.

A backend knows how to create, start, stop and remove one instance from an `InstancePlan`,
and how to read back what it runs.  **The engine is the state**: everything `list()` returns
comes from the engine itself (container labels, or the process backend's state files), never
from a side file the orchestrator keeps.  The orchestrator composes these small operations into
health-gated, rolled-back applies; backends never wait for health or decide what to replace.

Errors: every method raises `tei_manager.errors.BackendError` (what, where = instance, fix);
foreign exceptions (docker SDK, OSError) are mapped at this boundary.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tei_manager.core.capabilities import Capabilities
from tei_manager.core.diff import Action, ObservedInstance
from tei_manager.core.facts import HostFacts
from tei_manager.core.models import Profile
from tei_manager.core.plan import InstancePlan, Plan

# Progress of a long preparation step (image pull): (message, done, total) with sizes in bytes
# when known.
ProgressFn = Callable[[str, int | None, int | None], None]


class Backend(abc.ABC):
    """One engine: Docker, or local processes.  Instances are identified by `ObservedInstance`."""

    #: The registry name: shown by `status` and stored nowhere else.
    name: str
    #: Said by `down` after removing instances (what it deliberately kept), if anything.
    down_note: str | None = None

    def prepare_detail(self, instance: InstancePlan) -> str:
        """What `prepare` is about to fetch, for progress output ("" when nothing)."""
        return ""

    @abc.abstractmethod
    def list(self, profile: str | None = None) -> list[ObservedInstance]:
        """Every instance this backend runs for tei-manager (of one profile when given),
        including stopped ones and temporary slot copies."""

    @abc.abstractmethod
    def prepare(self, instance: InstancePlan, on_progress: ProgressFn | None = None) -> None:
        """Make sure `instance` can be created: its image is present (pulled if it can be), or
        the worker executable exists.  Touches no instance; raises BackendError if impossible."""

    @abc.abstractmethod
    def create(self, instance: InstancePlan, *, slot: str = "") -> ObservedInstance:
        """Create (do not start) the instance.  `slot` names a temporary copy ("next") that
        lives beside a live instance of the same name until `rename()` promotes it."""

    @abc.abstractmethod
    def start(self, obs: ObservedInstance) -> ObservedInstance:
        """Start a created or stopped instance.  Engine refusals (no GPU runtime, port taken)
        raise BackendError naming the instance."""

    @abc.abstractmethod
    def stop(self, obs: ObservedInstance, *, timeout_s: float = 10.0) -> ObservedInstance:
        """Stop gracefully (SIGTERM), then forcefully after `timeout_s`.  Stopped instances are
        kept (they can be started again) until `remove()`."""

    @abc.abstractmethod
    def remove(self, obs: ObservedInstance) -> None:
        """Stop if needed and delete the instance.  Never deletes the shared HF cache."""

    @abc.abstractmethod
    def refresh(self, obs: ObservedInstance) -> ObservedInstance | None:
        """Re-read one instance; None when it no longer exists."""

    @abc.abstractmethod
    def logs(self, obs: ObservedInstance, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        """Log lines (stdout and stderr together), the last `tail` of them, then new ones while
        `follow` is set (until the instance stops or the caller stops iterating)."""

    def restart(self, obs: ObservedInstance, *, timeout_s: float = 10.0) -> ObservedInstance:
        """Stop then start: what the supervisor does to an unhealthy instance."""
        if obs.state in ("running", "restarting", "paused"):
            obs = self.stop(obs, timeout_s=timeout_s)
        return self.start(obs)

    def failure_cause(self, obs: ObservedInstance, *, lines: int = 20) -> str:
        """Why an instance failed: exit code, OOM kill and the last log lines, for error messages."""
        current = self.refresh(obs) or obs
        parts: list[str] = []
        if current.oom_killed:
            parts.append("killed by the kernel's out-of-memory killer (host memory limit)")
        if current.state in ("exited", "dead") and current.exit_code is not None:
            parts.append(f"exited with code {current.exit_code}")
        if current.error:
            parts.append(current.error)
        try:
            tail = [line for line in self.logs(current, tail=lines) if line.strip()]
        except Exception:  # noqa: BLE001 - the cause is best effort: never mask the original failure
            tail = []
        if tail:
            parts.append("last log lines:\n    " + "\n    ".join(tail[-lines:]))
        return "; ".join(parts) if parts else "no further detail from the engine"

    def close(self) -> None:  # noqa: B027 - an optional hook: only some backends hold connections
        """Release engine connections."""


@runtime_checkable
class SlotRenaming(Protocol):
    """Optional: two versions of one instance can live side by side (make before break)."""

    def rename(self, obs: ObservedInstance, slot: str) -> ObservedInstance:
        """Move an instance to another slot ("" = live, "old", "next") without restarting it."""


@runtime_checkable
class HostPids(Protocol):
    """Optional: the instance's processes are visible on this host."""

    def pids(self, obs: ObservedInstance) -> set[int]:
        """Host pids of the instance's processes (to match NVML's per-process GPU memory)."""


@runtime_checkable
class PortAllocating(Protocol):
    """Optional: the engine, not the planner, decides where an instance is reachable."""

    def address(self, obs: ObservedInstance) -> tuple[str, int] | None:
        """Host and port the gateway reaches the instance on, once the engine has assigned them."""


@runtime_checkable
class Converging(Protocol):
    """Optional: the engine converges a whole Plan itself (apply does not drive it step by step)."""

    def converge(self, plan: Plan, *, timeout_s: float, on_event: Callable[[Any], None] | None = None
                 ) -> tuple[Action, ...]:
        """Apply the plan, health-gated, rolled back on failure; the actions taken."""


#: Backend option values by `BackendOption.name`; absent or None when not given.
Options = Mapping[str, Any]


@dataclass(frozen=True)
class BackendOption:
    """One CLI option a backend adds to every command that takes `--backend`."""

    name: str  # the parameter name, e.g. docker_url
    flag: str  # e.g. --docker-url
    help: str
    envvar: str | None = None


@dataclass(frozen=True)
class BackendEntry:
    """What the registry knows about one backend without opening its engine."""

    name: str
    help: str
    #: What it can host on a host described by the facts (images or executables, GPUs, ...).
    capabilities: Callable[[HostFacts], Capabilities]
    #: The backend itself; raises HostError when its engine does not answer.
    open: Callable[[Options], Backend]
    options: tuple[BackendOption, ...] = ()
    #: Option whose value the host probe needs (the engine's address), if any.
    probe_option: str | None = None
    #: For engines whose instances run elsewhere (a cluster): the Plan for that place, from the
    #: profile and its path, instead of planning for this host.
    plan: Callable[[Profile, str | None], Plan] | None = None
    #: Whether `--backend auto` considers it; a remote engine (a cluster) is only used when named,
    #: so that no command reaches a cluster the user did not ask for.
    auto: bool = True
