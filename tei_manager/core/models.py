"""The profile schema: what a user writes in `profiles/*.yaml`.

Strict on purpose (`extra="forbid"`, frozen): a typo is an error with a suggestion,
never a silently ignored key.  Field descriptions double as documentation
(`tei-manager profile schema` prints them).

This module is part of the pure core: it imports pydantic and the standard library only.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

Task = Literal["embed", "rerank"]
Runtime = Literal["tei", "fallback"]
RuntimeChoice = Literal["auto", "tei", "fallback"]
Priority = Literal["high", "normal", "low"]
Dtype = Literal["float16", "float32", "bfloat16"]
Pooling = Literal["cls", "mean", "splade", "last-token"]

DEFAULT_BIND = "127.0.0.1"
DEFAULT_TEI_IMAGE_REPO = "ghcr.io/huggingface/text-embeddings-inference"
DEFAULT_TEI_VERSION = "1.9"
DEFAULT_FALLBACK_IMAGE = "tei-manager/fallback-worker:dev"
DEFAULT_HF_CACHE = "tei-manager-hf-cache"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_byte_size(value: object) -> int:
    """Docker-style sizes: 6g, 512m, 1.5GiB, 1048576 -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 6g or 512m")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number, unit = match.groups()
            return int(float(number) * _SIZE_UNITS[unit.lower()])
    raise ValueError(f"{value!r} is not a size; write it like 6g, 512m or 1.5GiB")


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]


class Strict(BaseModel):
    """Base for every profile model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """Where an API key comes from. Keys never appear in the YAML itself."""

    env: str | None = Field(None, description="Name of an environment variable holding the key.")
    file: str | None = Field(None, description="Path of a file (e.g. a Docker/K8s secret) holding the key.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_plain_text(cls, data: object) -> object:
        if isinstance(data, str):
            raise ValueError(
                "API keys are never written in a profile; give a reference such as "
                "{env: FINANCE_API_KEY} or {file: /run/secrets/finance_api_key}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` or `file`")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


class Quota(Strict):
    """Per-tenant limits enforced by the gateway. None means unlimited."""

    requests_per_second: float | None = Field(None, gt=0, description="Sustained request rate.")
    burst: int | None = Field(None, ge=1, description="Requests allowed above the rate in a burst; default 2x the rate.")
    tokens_per_minute: int | None = Field(None, gt=0, description="Tokens counted by the tokenizer, per minute.")
    max_concurrent: int | None = Field(None, ge=1, description="Requests of this tenant in flight at once.")
    max_wait_ms: int = Field(2000, ge=0, description="Longest a request waits for a slot before 429.")


class Tenant(Strict):
    """A team that calls the models through the gateway."""

    description: str = ""
    api_keys: list[SecretRef] = Field(default_factory=list, description="References to this tenant's keys.")
    priority: Priority = Field("normal", description="QoS class when an upstream is saturated.")
    quota: Quota = Field(default_factory=Quota)


class ModelSpec(Strict):
    """A model that deployments can serve."""

    id: str = Field(description="Hugging Face hub id, e.g. BAAI/bge-m3. Reported as the served model name.")
    revision: str | None = Field(None, description="Commit sha or branch to pin.")
    task: Task = Field(description="embed or rerank: what the model natively does.")
    path: str | None = Field(
        None,
        description="Load from a local directory instead of the hub (mounted read-only into containers). "
        "`pkg:<module>/<subdir>` names a directory inside an installed Python package.",
    )
    # Overrides for models the catalog does not know; the planner needs them for the VRAM model.
    params_millions: float | None = Field(None, gt=0, description="Parameter count in millions.")
    hidden_size: int | None = Field(None, gt=0)
    num_layers: int | None = Field(None, gt=0)
    max_input_length: int | None = Field(None, gt=0, description="Longest input in tokens.")


class Tuning(Strict):
    """TEI's batching and admission flags (the fallback worker takes the same ones)."""

    max_batch_tokens: int | Literal["auto"] = Field(
        16384, description="Padded tokens per forward pass; `auto` picks the largest that fits the GPU share."
    )
    max_concurrent_requests: int = Field(512, ge=1, description="Permits (one per input); beyond them 429.")
    max_client_batch_size: int = Field(32, ge=1, description="Most inputs in one HTTP request.")
    max_batch_requests: int | None = Field(None, ge=1, description="Most requests per forward pass.")
    auto_truncate: bool = Field(True, description="Truncate over-long inputs instead of rejecting them.")
    accept_truncation: bool = Field(
        False, description="Let `max_batch_tokens: auto` go below the model's max input length."
    )
    dtype: Dtype | None = Field(None, description="Override the runtime's default precision.")
    pooling: Pooling | None = Field(None, description="Override the model's pooling config.")
    tokenization_workers: int | None = Field(None, ge=1)
    extra_args: list[str] = Field(default_factory=list, description="Passed verbatim after the generated flags.")

    @field_validator("max_batch_tokens")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a positive number of tokens or `auto`")
        return value


class Limits(Strict):
    """Host resources of one instance (container limits; advisory for processes)."""

    memory: ByteSize | None = Field(None, description="Memory limit, e.g. 6g.")
    memory_swap: ByteSize | None = Field(None, description="Memory + swap limit, e.g. 10g.")
    cpus: float | None = Field(None, gt=0, description="CPU quota in cores, e.g. 3.")
    shm_size: ByteSize | None = Field(None, description="Size of /dev/shm.")

    @model_validator(mode="after")
    def _swap_covers_memory(self) -> "Limits":
        if self.memory_swap is not None and self.memory is not None and self.memory_swap < self.memory:
            raise ValueError("memory_swap must be at least memory (it counts memory + swap)")
        return self


class GpuPlacement(Strict):
    """Pin to one GPU (`gpu: 0`) or spread replicas over several (`gpu: [0, 1]`)."""

    gpu: int | list[int]

    @field_validator("gpu")
    @classmethod
    def _indices(cls, value: int | list[int]) -> int | list[int]:
        indices = [value] if isinstance(value, int) else value
        if not indices:
            raise ValueError("list at least one GPU index")
        if any(i < 0 for i in indices):
            raise ValueError("GPU indices start at 0")
        if len(set(indices)) != len(indices):
            raise ValueError("a GPU is listed twice")
        return value

    @property
    def indices(self) -> list[int]:
        return [self.gpu] if isinstance(self.gpu, int) else list(self.gpu)


# `cpu`, `shared` (any GPU with room, chosen by the planner) or {gpu: N | [N, M]}.
Placement = Union[Literal["cpu", "shared"], GpuPlacement]


class Deployment(Strict):
    """One tenant's use of one model: becomes `replicas` instances."""

    name: str | None = Field(None, description="Instance name prefix; default `<tenant>-<model key>`.")
    tenant: str = Field(description="Owning tenant (a key of `tenants`).")
    model: str = Field(description="A key of `models`.")
    shared: bool = Field(False, description="Reachable through the gateway by every tenant, not only the owner.")
    placement: Placement = Field("shared", description="cpu, shared, {gpu: 0} or {gpu: [0, 1]}.")
    replicas: int = Field(1, ge=1)
    runtime: RuntimeChoice = Field("auto", description="tei, fallback, or auto (tei where it can run).")
    rerank_mode: Literal["cross-encoder", "bi-encoder"] | None = Field(
        None, description="bi-encoder serves /rerank from an embedding model (fallback runtime only)."
    )
    port: int | Literal["auto"] = Field("auto", description="Host port of the first replica; the next ones follow.")
    bind: str | None = Field(None, description="Host address to publish on; default the profile's `bind`.")
    tuning: Tuning = Field(default_factory=Tuning)
    limits: Limits = Field(default_factory=Limits)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the runtime.")

    @field_validator("name")
    @classmethod
    def _dns_safe(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?", value):
            raise ValueError("use lowercase letters, digits and dashes (a container name), at most 48 characters")
        return value

    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError("ports are 1-65535")
        return value

    @property
    def instance_prefix(self) -> str:
        return self.name or f"{self.tenant}-{self.model}"


class TeiImage(Strict):
    """Which TEI image family and version to run; the planner adds the per-architecture prefix."""

    repository: str = Field(DEFAULT_TEI_IMAGE_REPO)
    version: str = Field(DEFAULT_TEI_VERSION, description="Pinned tag version, e.g. 1.9 (never `latest`).")

    @field_validator("version")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if value in {"latest", ""}:
            raise ValueError("pin a version such as 1.9; `latest` changes under you")
        return value


class GatewaySettings(Strict):
    """Where `tei-manager serve` listens."""

    bind: str = DEFAULT_BIND
    port: int = Field(8080, ge=1, le=65535)
    upstream_timeout_s: float = Field(60.0, gt=0)


class Profile(Strict):
    """A whole deployment: models, tenants and who runs what where."""

    name: str = Field(description="Profile name; labels every container it creates.")
    description: str = ""
    bind: str = Field(DEFAULT_BIND, description="Default host address instances publish on.")
    tei_image: TeiImage = Field(default_factory=TeiImage)
    fallback_image: str = Field(DEFAULT_FALLBACK_IMAGE, description="Image of the fallback worker.")
    hf_cache: str = Field(
        DEFAULT_HF_CACHE, description="Docker volume name or absolute host path shared by all instances."
    )
    gpu_headroom_mib: int = Field(1024, ge=0, description="VRAM kept free on every GPU.")
    models: dict[str, ModelSpec]
    tenants: dict[str, Tenant] = Field(default_factory=dict)
    deployments: list[Deployment]
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @field_validator("name")
    @classmethod
    def _label_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]{0,62})", value):
            raise ValueError("use lowercase letters, digits, '.', '_' and '-' (it becomes a Docker label)")
        return value

    @model_validator(mode="after")
    def _references(self) -> "Profile":
        errors: list[str] = []
        for i, dep in enumerate(self.deployments):
            if dep.model not in self.models:
                errors.append(f"deployments[{i}].model: unknown model {dep.model!r}; known: {sorted(self.models)}")
            if self.tenants and dep.tenant not in self.tenants:
                errors.append(f"deployments[{i}].tenant: unknown tenant {dep.tenant!r}; known: {sorted(self.tenants)}")
        names = [d.instance_prefix for d in self.deployments]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            errors.append(f"deployments: two deployments are named {dup!r}; give one a `name`")
        if errors:
            raise ValueError("; ".join(errors))
        return self
