"""The contract of a runtime: the server program that answers /embed and /rerank for one instance.

A runtime owns everything that is specific to it: the image (per device and CPU architecture) or
executable that runs it, what stops it from running on a device, its VRAM profile, how its typed
settings render as arguments and environment, and its health/info paths and routes.  The
planner and the backends ask the runtime instead of knowing it.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tei_manager.core.facts import GpuFact
from tei_manager.core.models import Deployment, Profile
from tei_manager.core.plan import InstancePlan, RuntimeSettings
from tei_manager.core.tuning import VramProfile

#: The HTTP routes every TEI-compatible runtime serves (the gateway proxies these).
TEI_ROUTES = frozenset({"/embed", "/embed_all", "/embed_sparse", "/rerank", "/tokenize", "/decode",
                        "/info", "/health", "/metrics"})


@dataclass(frozen=True)
class Device:
    """Where an instance would run: a GPU (None: the CPU) of a host with this CPU architecture."""

    gpu: GpuFact | None
    cpu_arch: str = "x86_64"

    def describe(self) -> str:
        return "CPU" if self.gpu is None else f"compute capability {self.gpu.arch_label}"


class Runtime(Protocol):
    """One runtime; a module-level instance is registered in tei_manager.runtimes.registry."""

    #: Registry key, written in profiles (`runtime: tei`) and plans.
    name: str
    #: The program that serves (what `plan` shows in the command line).
    program: str
    #: The local executable a process backend starts (None: shipped only as an image).
    executable: str | None
    health_path: str
    info_path: str
    routes: frozenset[str]
    #: What the runtime adds to the VRAM model (tei_manager.core.tuning).
    vram: VramProfile
    #: True when it can serve /rerank from an embedding model (`rerank_mode: bi-encoder`).
    ranks_with_embeddings: bool

    def image(self, profile: Profile, device: Device) -> str | None:
        """The image that runs it on `device`, or None when there is none."""

    def obstacle(self, deployment: Deployment, profile: Profile, device: Device) -> str | None:
        """Why it can never run this deployment on `device` (whatever the backend), or None."""

    def flash_attention(self, device: Device) -> bool:
        """Whether its batches are unpadded on `device` (changes the VRAM estimate)."""

    def render_args(self, settings: RuntimeSettings) -> list[str]:
        """Its flags after --model-id/--port/--hostname, in a stable order."""

    def render_env(self, instance: InstancePlan, *, in_container: bool) -> dict[str, str]:
        """The environment it needs beyond the deployment's own `env` (nothing of the operator's)."""
