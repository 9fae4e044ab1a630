"""The contract between the orchestrator and an engine that runs instances.

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
from collections.abc import Callable, Iterator

from tei_manager.core.diff import ObservedInstance
from tei_manager.core.plan import InstancePlan

# Progress of a long preparation step (image pull): (message, done, total) with sizes in bytes
# when known.
ProgressFn = Callable[[str, int | None, int | None], None]


class Backend(abc.ABC):
    """One engine: Docker, or local processes.  Instances are identified by `ObservedInstance`."""

    #: "docker" or "process": shown by `status` and stored nowhere else.
    name: str

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
    def rename(self, obs: ObservedInstance, slot: str) -> ObservedInstance:
        """Move an instance to another slot ("" = live, "old", "next") without restarting it."""

    @abc.abstractmethod
    def refresh(self, obs: ObservedInstance) -> ObservedInstance | None:
        """Re-read one instance; None when it no longer exists."""

    @abc.abstractmethod
    def logs(self, obs: ObservedInstance, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        """Log lines (stdout and stderr together), the last `tail` of them, then new ones while
        `follow` is set (until the instance stops or the caller stops iterating)."""

    @abc.abstractmethod
    def pids(self, obs: ObservedInstance) -> set[int]:
        """Host pids of the instance's processes (to match NVML's per-process GPU memory)."""

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
        except Exception:  # the cause is best effort: never mask the original failure
            tail = []
        if tail:
            parts.append("last log lines:\n    " + "\n    ".join(tail[-lines:]))
        return "; ".join(parts) if parts else "no further detail from the engine"

    def close(self) -> None:  # noqa: B027 - an optional hook: only some backends hold connections
        """Release engine connections."""
