"""Where a trial runs: the one seam between tune and the runtimes/backends that start instances.

A `TrialTarget` starts a temporary instance of one deployment with the settings under trial, on a
port of its own, and stops it afterwards; it never touches live instances. `apply`'s backends
implement it for real deployments (same image, device and limits); `LocalWorkerTarget` (in
`tei_manager.tune.local`) runs the fallback worker as a local process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

#: One point of the search space: flag name (the profile's `tuning:` key) -> value.
Settings = Mapping[str, int | str]


class StartFailed(Exception):
    """The instance never became ready (crashed, out of memory, or timed out); `reason` says which."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Exit:
    """How a trial instance ended on its own: ``oom`` (killed by the kernel or CUDA out of memory) or ``crash``."""

    reason: str
    detail: str = ""


class TrialInstance(Protocol):
    """A running temporary instance."""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: where the load generator sends requests."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """What every request carries to be let in (the instance's internal key), or nothing."""
        ...

    def peak_memory_bytes(self) -> int | None:
        """The most memory the instance has held since it started (warm-up included): GPU memory of
        its processes on a GPU, resident memory on CPU; None when it cannot be read."""
        ...

    def exited(self) -> Exit | None:
        """None while it runs; why it stopped when it stopped by itself (a crash or an OOM kill)."""
        ...

    def stop(self) -> None:
        """Stop and remove it; safe to call twice."""
        ...


class TrialTarget(Protocol):
    """Starts temporary instances of one deployment."""

    @property
    def device(self) -> str:
        """What the trials run on, for the calibration store: ``cpu`` or the GPU's name."""
        ...

    def start(self, settings: Settings) -> TrialInstance:
        """Start an instance with ``settings`` and return once it is ready; raises StartFailed."""
        ...
