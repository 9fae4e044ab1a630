"""What a backend can run, as plain values the planner reads instead of host facts.

Each backend (tei_manager.backends) declares its capabilities; for engines that can be
unreachable (a container engine) they depend on the host, so the backend builds them from
`HostFacts`.  The planner asks `obstacle()` whether a runtime can run here and why not.
Pure core: no I/O, no backend names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tei_manager.core.facts import GpuFact

#: What a backend starts: container images or local executables.
Artifact = Literal["image", "executable"]


class Capabilities(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field(description="The backend's registry name.")
    artifact: Artifact = Field(description="What it runs: a runtime without one cannot run on it.")
    gpus: bool = Field(True, description="Whether its instances can use GPUs.")
    allocates_host_ports: bool = Field(
        False, description="True when the engine, not the planner, picks where instances are reachable."
    )
    replicas_as_one: bool = Field(
        False, description="True when the engine runs a deployment's replicas as one object (a k8s Deployment)."
    )
    summary: str = Field("", description="Why runtimes of this artifact can run, for `plan`'s reasons.")
    blocked: str | None = Field(None, description="Why nothing can run on it right now (engine unreachable).")
    no_gpu: str = Field(
        "this backend cannot give a {runtime} instance GPU {gpu}",
        description="Why a GPU placement cannot run; {runtime} and {gpu} are filled in.",
    )
    other_artifact: str | None = Field(
        None,
        description="Why runtimes shipped only as the other artifact cannot run (default: a generic sentence).",
    )
    warnings: tuple[str, ...] = Field((), description="Said by `plan` when it changes a decision.")

    def obstacle(self, runtime: str, *, has_artifact: bool, gpu: GpuFact | None) -> str | None:
        """Why `runtime` cannot run on this backend on `gpu` (None: CPU), or None when it can."""
        if not has_artifact:
            shape = "container images" if self.artifact == "image" else "local executables"
            return self.other_artifact or f"the {self.backend} backend runs {shape}, which {runtime} does not ship"
        if self.blocked:
            return self.blocked
        if gpu is not None and not self.gpus:
            return self.no_gpu.format(runtime=runtime, gpu=gpu.index)
        return None
