"""What the planner produces: a backend-neutral description of every instance.

A Plan says *what* runs (image, typed runtime settings, environment, resources, ports,
probes); backends (containers, local processes, later Kubernetes/Compose exporters)
decide *how*.  Runtime flags are not stored: the runtime (tei_manager.runtimes) renders
`settings` into its own arguments at the edge.  Pure core.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tei_manager.core.models import GatewaySettings, Runtime, Task, Tenant

# Inside a container every runtime listens on this port (seed 004 maps host ports onto 8080).
CONTAINER_PORT = 8080
# Where a model given by `path` is mounted read-only inside a container.
CONTAINER_MODEL_DIR = "/models"
# Where the shared Hugging Face cache is mounted inside a container (TEI images use /data).
CONTAINER_HF_CACHE = "/data"
HEALTH_PATH = "/health"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VramEstimate(Frozen):
    """The planner's VRAM model for one instance (see docs/vram-model.md)."""

    weights_mib: int
    activations_mib: int
    context_mib: int
    total_mib: int
    dtype: str
    max_batch_tokens: int


class MeasuredVram(Frozen):
    """A peak `tune` measured for an instance's exact model, runtime, dtype, batch budget and GPU
    (the calibration store). Kept beside the Plan's instances, not in them, so a new measurement
    never changes an instance's spec hash (nothing about the running instance changes)."""

    total_mib: int
    estimated_mib: int = Field(description="What the VRAM model estimated for the same instance.")
    measured_at: str | None = None


class ModelSource(Frozen):
    """Where the runtime loads the model from: the hub (id + revision) or a local directory.
    Downloads from the hub land in the instance's `hf_cache`."""

    hub_id: str
    revision: str | None = None
    local_path: str | None = Field(None, description="Absolute host directory, when the profile gives `path`.")
    mount_name: str | None = Field(None, description="Directory name under /models inside a container.")

    def model_ref(self, *, in_container: bool) -> str:
        """The `--model-id` value: a local directory when there is one, else the hub id."""
        if self.local_path is None:
            return self.hub_id
        if in_container:
            return f"{CONTAINER_MODEL_DIR}/{self.mount_name}"
        return self.local_path


class RuntimeSettings(Frozen):
    """What the runtime is told to do, as typed values (TEI's flags; the fallback worker takes the same)."""

    served_model_name: str
    max_batch_tokens: int
    max_concurrent_requests: int
    max_client_batch_size: int
    revision: str | None = None
    dtype: str | None = Field(None, description="Set only when the profile overrides the runtime's default.")
    pooling: str | None = None
    max_batch_requests: int | None = None
    tokenization_workers: int | None = None
    auto_truncate: bool = True
    rerank_mode: str | None = Field(None, description="`bi-encoder`: /rerank from an embedding model.")
    extra_args: tuple[str, ...] = Field((), description="Passed verbatim after the generated flags.")


class ModelCache(Frozen):
    """Where downloaded models are kept, shared by every instance: a named volume the engine
    manages, or a directory on the host.  Exactly one is set."""

    volume: str | None = None
    host_path: str | None = None

    @classmethod
    def from_profile(cls, value: str) -> ModelCache:
        """The profile's `hf_cache`: an absolute path is a host directory, anything else a volume name."""
        return cls(host_path=value) if value.startswith("/") else cls(volume=value)

    @property
    def name(self) -> str:
        return self.host_path or self.volume or ""


class InstancePlan(Frozen):
    """One process or container serving one model for one tenant."""

    name: str = Field(description="Unique in the profile: `<deployment>` or `<deployment>-<replica>`.")
    profile: str
    deployment: str
    replica: int = 0
    tenant: str
    shared: bool = False
    model_key: str
    model: ModelSource
    served_model_name: str
    task: Task
    runtime: Runtime
    runtime_reason: str = Field("", description="Why this runtime was chosen (shown by `plan`).")
    image: str = Field(description="TEI image for the GPU architecture, or the fallback worker image.")
    gpu: int | None = Field(None, description="GPU index; None means CPU.")
    gpu_uuid: str | None = Field(None, description="The GPU's UUID when the host reported it (stable across reboots).")
    bind: str
    host_port: int
    settings: RuntimeSettings
    tasks: tuple[Task, ...] = Field((), description="Every task the instance answers (the gateway's routes).")
    env: dict[str, str] = Field(default_factory=dict, description="The deployment's own env; nothing inherited.")
    memory_bytes: int | None = None
    memory_swap_bytes: int | None = None
    cpus: float | None = None
    shm_bytes: int | None = None
    hf_cache: ModelCache = Field(description="The shared model cache (a volume or a host directory).")
    vram: VramEstimate | None = None
    health_path: str = HEALTH_PATH
    internal_auth: bool = Field(
        False, description="Started with its internal key (tei_manager.instance_keys); only the gateway calls it."
    )
    internal_key_id: str | None = Field(
        None,
        description="A digest of the secret the key derives from (never the key): a new secret changes the spec "
        "hash, so the next apply replaces the instance and its key rotates.",
    )

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else f"gpu:{self.gpu}"

    @property
    def args(self) -> tuple[str, ...]:
        """The runtime's flags after --model-id/--port/--hostname, rendered by the runtime."""
        from tei_manager.runtimes.registry import get_runtime  # pure; imported late: runtimes import this module

        return tuple(get_runtime(self.runtime).render_args(self.settings))

    def command(self, *, in_container: bool) -> list[str]:
        """The full runtime argument list.

        In a container the runtime listens on 0.0.0.0:CONTAINER_PORT and the engine publishes it on
        `bind:host_port`; as a local process it listens on `bind:host_port` itself.
        """
        host, port = ("0.0.0.0", CONTAINER_PORT) if in_container else (self.bind, self.host_port)
        return [
            "--model-id", self.model.model_ref(in_container=in_container),
            "--port", str(port),
            "--hostname", host,
            *self.args,
        ]

    @property
    def spec_hash(self) -> str:
        """Changes whenever anything that would require a new container changes."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class GpuBudget(Frozen):
    """How a GPU's memory is shared out by the plan."""

    index: int
    name: str
    total_mib: int
    headroom_mib: int
    in_use_mib: int = Field(0, description="Used by processes the plan does not own (live host only).")
    budget_mib: int = Field(description="total - headroom - in_use: what instances may use.")
    planned_mib: int
    instances: tuple[str, ...] = ()

    @property
    def free_after_plan_mib(self) -> int:
        return self.budget_mib - self.planned_mib


class Plan(Frozen):
    """Everything `apply` needs, and everything `plan` prints."""

    profile: str
    source: str | None = Field(None, description="Path of the profile file.")
    instances: tuple[InstancePlan, ...]
    gpus: tuple[GpuBudget, ...] = ()
    warnings: tuple[str, ...] = ()
    host: Literal["live", "described"] = Field(
        "live", description="`described` when planned for another host (--gpus)."
    )
    backend: str | None = Field(None, description="The backend planned for (its capabilities shaped the plan).")
    tenants: dict[str, Tenant] = Field(
        default_factory=dict, description="Tenants with their quotas and key *references* (never key values)."
    )
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    model_numbers: dict[str, str] = Field(
        default_factory=dict,
        description="Model key -> where the VRAM model's numbers came from: profile, files (where), catalog.",
    )
    measured_vram: dict[str, MeasuredVram] = Field(
        default_factory=dict,
        description="Instance name -> the measured peak the GPU budget used instead of the estimate (tune's "
                    "calibration); an instance on a GPU that is not here was budgeted by the estimate.")

    def vram_source(self, name: str) -> Literal["measured", "estimated"] | None:
        """Which figure the GPU budget used for an instance: None on CPU."""
        if name in self.measured_vram:
            return "measured"
        return "estimated" if self.instance(name).vram is not None else None

    def deployments(self) -> dict[str, tuple[InstancePlan, ...]]:
        """Deployment name -> its replicas, by replica number.  Backends that run a deployment as
        one object (`Capabilities.replicas_as_one`) read this; the others take the instances."""
        grouped: dict[str, list[InstancePlan]] = {}
        for inst in self.instances:
            grouped.setdefault(inst.deployment, []).append(inst)
        return {name: tuple(sorted(members, key=lambda i: i.replica)) for name, members in grouped.items()}

    def instance(self, name: str) -> InstancePlan:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)
