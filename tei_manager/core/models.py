"""The profile schema: what a user writes in `profiles/*.yaml`.

Strict on purpose (`extra="forbid"`, frozen): a typo is an error with a suggestion,
never a silently ignored key.  Field descriptions double as documentation
(`tei-manager profile schema` prints them).

This module is part of the pure core: it imports pydantic and the standard library only.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

Task = Literal["embed", "rerank"]
#: A runtime's name: a key of the runtime registry (tei_manager.runtimes), e.g. "tei" or "fallback".
Runtime = str
#: `auto` or a runtime's name.
RuntimeChoice = str
Priority = Literal["high", "normal", "low"]
Dtype = Literal["float16", "float32", "bfloat16"]
Pooling = Literal["cls", "mean", "splade", "last-token"]
ModelSourceKind = Literal["hub", "modelscope"]

DEFAULT_BIND = "127.0.0.1"
DEFAULT_TEI_IMAGE_REPO = "ghcr.io/huggingface/text-embeddings-inference"
#: An exact release: a moving tag such as `1.9` changed silently from 1.9.3 to 1.9.4.
DEFAULT_TEI_VERSION = "1.9.4"
DEFAULT_FALLBACK_IMAGE = "tei-manager/fallback-worker:dev"
DEFAULT_HF_CACHE = "tei-manager-hf-cache"
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"

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
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` or `file`")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


class Quota(Strict):
    """Per-tenant limits enforced by the gateway. None means unlimited."""

    requests_per_second: float | None = Field(None, gt=0, description="Sustained request rate.")
    burst: int | None = Field(None, ge=1,
                              description="Requests allowed above the rate in a burst; default 2x the rate.")
    tokens_per_minute: int | None = Field(None, gt=0, description="Tokens counted by the tokenizer, per minute.")
    max_concurrent: int | None = Field(None, ge=1, description="Requests of this tenant in flight at once.")
    max_wait_ms: int = Field(2000, ge=0, description="Longest a request waits for a slot before 429.")


class Tenant(Strict):
    """A team that calls the models through the gateway."""

    description: str = Field("", description="Free text, shown by the TUI.")
    api_keys: list[SecretRef] = Field(default_factory=list, description="References to this tenant's keys.")
    priority: Priority = Field("normal", description="QoS class when an upstream is saturated.")
    quota: Quota = Field(default_factory=Quota, description="Rate and concurrency limits at the gateway.")


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
    source: ModelSourceKind = Field(
        "hub",
        description="Where `models pull` fetches it: `hub` (the profile's `hub.endpoint`: huggingface.co or a "
        "mirror) or `modelscope`. Ignored when `path` is given (a local directory).",
    )
    # Overrides for models the catalog does not know; the planner needs them for the VRAM model.
    params_millions: float | None = Field(None, gt=0, description="Parameter count in millions.")
    hidden_size: int | None = Field(None, gt=0, description="Width of the hidden states (config.json hidden_size).")
    num_layers: int | None = Field(None, gt=0, description="Transformer layers (config.json num_hidden_layers).")
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
    tokenization_workers: int | None = Field(None, ge=1, description="Tokenizer threads; default CPU cores - 1.")
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
    def _swap_covers_memory(self) -> Limits:
        if self.memory_swap is not None and self.memory is not None and self.memory_swap < self.memory:
            raise ValueError("memory_swap must be at least memory (it counts memory + swap)")
        return self


class GpuPlacement(Strict):
    """Pin to one GPU (`gpu: 0`) or spread replicas over several (`gpu: [0, 1]`)."""

    gpu: int | list[int] = Field(description="A GPU index, or a list of them to spread replicas over.")

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


# --- Kubernetes (`tei-manager export kubernetes`, `--backend kubernetes`) ---------------------------------

#: How instances that the plan puts on one GPU share it in a cluster.
GpuSharing = Literal["none", "time-slicing", "mig"]


class KubernetesGpu(Strict):
    """A GPU type of the cluster's nodes; `placement: {gpu: N}` means the N-th entry of `kubernetes.gpus`."""

    product: str = Field(description="GPU Feature Discovery's `nvidia.com/gpu.product` label, e.g. NVIDIA-L20.")
    memory: ByteSize = Field(description="Memory of one GPU, e.g. 46068MiB or 48g (the VRAM plan's budget).")
    compute_capability: str = Field(description="major.minor, e.g. 8.9 (labels nvidia.com/gpu.compute.major/minor).")

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _major_minor(cls, value: object) -> object:
        text = str(value)
        if not re.fullmatch(r"\d+\.\d+", text):
            raise ValueError("write the compute capability as major.minor, e.g. 8.9")
        return text


class ModelCache(Strict):
    """Where instances keep downloaded models in a cluster (mounted at /data)."""

    kind: Literal["pvc", "host-path", "existing-claim"] = Field(
        "pvc", description="pvc: a claim the export creates; host-path: a node directory; existing-claim: yours."
    )
    size: ByteSize = Field(100 * 1024**3, description="Size of the claim the export creates (pvc).")
    storage_class: str | None = Field(None, description="StorageClass of that claim; default the cluster's.")
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        "ReadWriteMany", description="ReadWriteMany lets pods on every node share one cache."
    )
    path: str | None = Field(None, description="Node directory (host-path).")
    claim: str | None = Field(None, description="Name of an existing PersistentVolumeClaim (existing-claim).")

    @model_validator(mode="after")
    def _needs(self) -> ModelCache:
        if self.kind == "host-path" and not (self.path and self.path.startswith("/")):
            raise ValueError("kind host-path needs an absolute `path`")
        if self.kind == "existing-claim" and not self.claim:
            raise ValueError("kind existing-claim needs `claim` (the PersistentVolumeClaim's name)")
        return self


class Autoscaling(Strict):
    """Scale a deployment on TEI's queue (te_queue_size); Kubernetes only (`export`, `--backend kubernetes`)."""

    min_replicas: int = Field(1, ge=1, description="Fewest pods.")
    max_replicas: int = Field(description="Most pods; each needs its GPU share, so size the node pool for it.")
    queue_size: int = Field(32, ge=1, description="Target of queued requests per pod (te_queue_size) before scaling.")

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        return self


class KubernetesSettings(Strict):
    """How `export kubernetes` and `--backend kubernetes` render the profile for a cluster."""

    namespace: str | None = Field(None, description="Namespace of every object; default the profile's name.")
    gpus: list[KubernetesGpu] = Field(
        default_factory=list, description="The GPU types placements refer to (index = `placement: {gpu: N}`)."
    )
    cpu_arch: Literal["amd64", "arm64"] = Field("amd64", description="Node CPU architecture (kubernetes.io/arch).")
    gpu_sharing: GpuSharing = Field(
        "none",
        description="How deployments that the plan puts on one GPU share it: time-slicing (device plugin "
        "replicas, no memory isolation) or mig (a MIG slice per deployment, `mig_profile`); none refuses sharing.",
    )
    time_slicing_replicas: int | None = Field(
        None, ge=2, description="The device plugin's time-slicing replicas per GPU; default the most instances "
        "the plan puts on one GPU.",
    )
    model_cache: ModelCache = Field(default_factory=ModelCache, description="Where downloaded models live.")
    hf_token_secret: str | None = Field(None, description="Secret with key HF_TOKEN for gated models.")
    tenant_keys_secret: str | None = Field(
        None, description="Secret holding the tenants' API keys, one key per `env` name or file name; "
        "default `<profile>-tenant-keys`.",
    )
    # The tag docs/kubernetes.md's build command gives docker/tei-manager.Dockerfile (the package's
    # version); a cluster that pulls from a registry gets the pushed name here instead.
    gateway_image: str = Field(
        "tei-manager/tei-manager:0.1.0",
        description="Image with tei-manager installed (docker/tei-manager.Dockerfile): push it to your registry "
        "and name it here; the default is the tag the documented build gives.",
    )
    gateway_replicas: int = Field(2, ge=2, description="Gateway pods (at least 2, spread over nodes).")
    autoscaler: Literal["keda", "hpa"] = Field(
        "keda", description="keda: a ScaledObject with a Prometheus trigger; hpa: an HPA on a custom metric "
        "(needs prometheus-adapter serving te_queue_size).",
    )
    prometheus_url: str = Field(
        "http://prometheus-operated.monitoring.svc:9090", description="Prometheus that KEDA queries."
    )
    monitoring: bool = Field(
        True, description="Render ServiceMonitors and a PrometheusRule (needs prometheus-operator's CRDs)."
    )
    monitoring_namespace: str = Field("monitoring", description="Namespace of Prometheus (allowed to scrape).")
    run_as_user: int = Field(10001, ge=1, description="Non-root user id of every container.")
    drain_seconds: int = Field(
        30, ge=1, description="Grace after SIGTERM for batches in flight to finish (added to the endpoint delay)."
    )
    startup_seconds: int = Field(
        1800, ge=60, description="Longest a pod may take to answer /health (a model download included)."
    )

    @field_validator("namespace", "hf_token_secret", "tenant_keys_secret")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise ValueError("use lowercase letters, digits and dashes (a Kubernetes name), at most 63 characters")
        return value


class FingerprintLimits(Strict):
    """How far a deployment's outputs may drift from its recorded fingerprint before an apply refuses."""

    min_cosine: float = Field(
        0.99, gt=-1, le=1,
        description="Embed: refuse when any probe's new vector has a lower cosine with the recorded one.",
    )
    max_score_delta: float = Field(
        0.05, ge=0, description="Rerank: refuse when any probe's score moves by more than this."
    )


class Deployment(Strict):
    """One tenant's use of one model: becomes `replicas` instances."""

    name: str | None = Field(None, description="Instance name prefix; default `<tenant>-<model key>`.")
    tenant: str = Field(description="Owning tenant (a key of `tenants`).")
    model: str = Field(description="A key of `models`.")
    shared: bool = Field(False, description="Reachable through the gateway by every tenant, not only the owner.")
    placement: Placement = Field("shared", description="cpu, shared, {gpu: 0} or {gpu: [0, 1]}.")
    replicas: int = Field(1, ge=1, description="Instances of this deployment; the gateway balances over them.")
    runtime: RuntimeChoice = Field(
        "auto", description="auto (the first runtime that can run it: tei, then fallback) or a runtime's name."
    )
    rerank_mode: Literal["cross-encoder", "bi-encoder"] | None = Field(
        None, description="bi-encoder serves /rerank from an embedding model (fallback runtime only)."
    )
    port: int | Literal["auto"] = Field("auto", description="Host port of the first replica; the next ones follow.")
    bind: str | None = Field(None, description="Host address to publish on; default the profile's `bind`.")
    tuning: Tuning = Field(default_factory=Tuning, description="Batching and admission flags of the runtime.")
    limits: Limits = Field(default_factory=Limits, description="Host memory and CPU limits of each instance.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the runtime.")
    autoscaling: Autoscaling | None = Field(
        None, description="Kubernetes only: scale between min and max replicas on TEI's queue size."
    )
    mig_profile: str | None = Field(
        None, description="Kubernetes with gpu_sharing: mig: the MIG slice each pod gets, e.g. 3g.40gb."
    )
    accept_embedding_change: bool = Field(
        False,
        description="Let an apply switch to a model, revision, runtime, dtype or pooling whose outputs drift from "
        "the recorded fingerprint (as `apply --accept-embedding-change` does once).",
    )
    fingerprint: FingerprintLimits = Field(
        default_factory=FingerprintLimits,
        description="Drift thresholds of the embedding fingerprint that guards applies (docs/models.md).",
    )

    @field_validator("name")
    @classmethod
    def _dns_safe(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?", value):
            raise ValueError("use lowercase letters, digits and dashes (a container name), at most 48 characters")
        return value

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        # The registry is pure (no I/O); imported here because runtimes import this module.
        from tei_manager.runtimes.registry import runtime_names

        names = runtime_names()
        if value != "auto" and value not in names:
            raise ValueError(f"unknown runtime {value!r}; use auto or one of {', '.join(names)}")
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

    repository: str = Field(DEFAULT_TEI_IMAGE_REPO, description="Image repository (a mirror of TEI's, for example).")
    version: str = Field(DEFAULT_TEI_VERSION, description="Pinned tag version, e.g. 1.9.4 (never `latest`).")
    variant: Literal["per-arch", "cuda"] = Field(
        "per-arch",
        description="per-arch: the image built for each GPU's compute capability; cuda: TEI's multi-arch "
        "`cuda-<version>` image, whose entrypoint picks the binary for the GPU (x86_64 only).",
    )

    @field_validator("version")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if value in {"latest", ""}:
            raise ValueError("pin a version such as 1.9.4; `latest` changes under you")
        return value


class QuotaStoreSettings(Strict):
    """Rate and token buckets shared by several gateways (see docs/gateway.md, "Several gateways")."""

    url: str = Field(description="Redis URL, e.g. redis://quota-redis:6379/0 (rediss:// for TLS).")
    password: SecretRef | None = Field(None, description="The Redis password, as an env or file reference.")
    on_unavailable: Literal["open", "closed"] = Field(
        "open",
        description="When Redis cannot be reached: `open` admits requests without quota checks (availability "
        "first), `closed` refuses them with 503 (quotas first).",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a Redis URL: redis://HOST:PORT/DB, rediss://... or unix:///path")
        if "@" in value.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("leave credentials out of the URL; give `password: {env: REDIS_PASSWORD}`")
        return value


class GatewaySettings(Strict):
    """Where `tei-manager serve` listens."""

    bind: str = Field(DEFAULT_BIND, description="Address the gateway listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the gateway listens on; no instance may use it.")
    upstream_timeout_s: float = Field(60.0, gt=0, description="Longest wait for an instance's answer.")
    max_request_inputs: int = Field(
        2048, ge=1, description="Most inputs (texts, documents) in one client request; more is refused with 413."
    )
    quota_store: QuotaStoreSettings | None = Field(
        None, description="Share tenants' rate and token quotas through Redis; default: in this gateway's memory."
    )
    protect_instances: bool = Field(
        True,
        description="Start every instance with an internal key that only the gateway and tei-manager's own "
        "probes present, so no local process can call an instance directly and bypass tenant keys and quotas.",
    )


class HubSettings(Strict):
    """Where model files come from, for sizing (`plan`) and for `models pull` / `apply`."""

    endpoint: str = Field(DEFAULT_HUB_ENDPOINT,
                          description="The hub or a mirror with its file API (`HF_ENDPOINT`), e.g. https://hf-mirror.com.")
    token: SecretRef | None = Field(None, description="Token for gated or private models, e.g. {env: HF_TOKEN}.")
    modelscope_endpoint: str = Field(DEFAULT_MODELSCOPE_ENDPOINT,
                                     description="ModelScope's base URL, for models with `source: modelscope`.")
    download_dir: str | None = Field(
        None,
        description="Absolute directory `models pull` fills when `hf_cache` is a Docker volume "
        "(with a host-directory `hf_cache`, models go there, where the instances find them).",
    )
    max_workers: int = Field(4, ge=1, le=64, description="Files `models pull` downloads at once.")

    @field_validator("endpoint", "modelscope_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http(s) URL such as https://hf-mirror.com")
        return value.rstrip("/")

    @field_validator("download_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("give an absolute directory, e.g. /srv/models")
        return value


class Profile(Strict):
    """A whole deployment: models, tenants and who runs what where."""

    name: str = Field(description="Profile name; labels every container it creates.")
    description: str = Field("", description="Free text, shown by `plan` and the TUI.")
    bind: str = Field(DEFAULT_BIND, description="Default host address instances publish on.")
    tei_image: TeiImage = Field(default_factory=TeiImage, description="TEI image repository and pinned version.")
    fallback_image: str = Field(DEFAULT_FALLBACK_IMAGE, description="Image of the fallback worker.")
    hf_cache: str = Field(
        DEFAULT_HF_CACHE, description="Docker volume name or absolute host path shared by all instances."
    )
    gpu_headroom_mib: int = Field(1024, ge=0, description="VRAM kept free on every GPU.")
    hub: HubSettings = Field(default_factory=HubSettings,
                             description="Model hub or mirror, token and download directory for model files.")
    models: dict[str, ModelSpec] = Field(description="Models by key; deployments refer to the keys.")
    tenants: dict[str, Tenant] = Field(default_factory=dict, description="Teams by name, with keys, priority, quota.")
    deployments: list[Deployment] = Field(description="Who runs which model where.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings, description="Where `tei-manager serve` listens.")
    kubernetes: KubernetesSettings = Field(
        default_factory=KubernetesSettings,
        description="Cluster rendering (`export kubernetes`, `--backend kubernetes`).",
    )

    @field_validator("name")
    @classmethod
    def _label_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]{0,62})", value):
            raise ValueError("use lowercase letters, digits, '.', '_' and '-' (it becomes a Docker label)")
        return value

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Profile:
        # The file loader (tei_manager.profiles) runs the same checks itself to attach line numbers,
        # and passes context={"skip_references": True}; profiles built in code are checked here.
        if info.context and info.context.get("skip_references"):
            return self
        problems = reference_problems(self)
        if problems:
            raise ValueError("; ".join(f"{dotted(loc)}: {msg}" for loc, msg, _ in problems))
        return self


Loc = tuple[Union[str, int], ...]


def dotted(loc: Loc) -> str:
    """('deployments', 1, 'tuning') -> 'deployments[1].tuning': every error location is written so."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(word: str, choices: Iterable[object]) -> str | None:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def reference_problems(profile: Profile) -> list[tuple[Loc, str, str | None]]:
    """Cross-references a single field cannot check: `(location, message, hint)` per problem.

    Unknown model or tenant, two deployments with one instance name, explicit host ports that
    overlap (a deployment with port p and n replicas takes p..p+n-1) or hit the gateway's port,
    and `rerank_mode` that does not suit the model's task.
    """
    problems: list[tuple[Loc, str, str | None]] = []
    for i, dep in enumerate(profile.deployments):
        if dep.model not in profile.models:
            defined = ", ".join(sorted(profile.models)) or "no models"
            problems.append((("deployments", i, "model"), f"unknown model {dep.model!r}; the profile defines "
                             f"{defined}", _suggest(dep.model, profile.models)))
        if profile.tenants and dep.tenant not in profile.tenants:
            problems.append((("deployments", i, "tenant"), f"unknown tenant {dep.tenant!r}; the profile defines "
                             f"{', '.join(sorted(profile.tenants))}", _suggest(dep.tenant, profile.tenants)))
        spec = profile.models.get(dep.model)
        if spec is not None and dep.rerank_mode == "bi-encoder" and spec.task != "embed":
            problems.append((("deployments", i, "rerank_mode"),
                             f"bi-encoder reranking needs an embedding model; {dep.model!r} is a {spec.task} model",
                             "remove rerank_mode: a rerank model scores pairs itself"))
        if spec is not None and dep.rerank_mode == "cross-encoder" and spec.task != "rerank":
            problems.append((("deployments", i, "rerank_mode"),
                             f"{dep.model!r} is an embedding model and cannot score (query, text) pairs",
                             "use rerank_mode: bi-encoder (fallback runtime) or a rerank model"))
        if dep.rerank_mode == "bi-encoder" and dep.runtime == "tei":
            problems.append((("deployments", i, "runtime"), "TEI has no bi-encoder rerank mode",
                             "use runtime: fallback (or auto)"))
    seen: dict[str, int] = {}
    for i, dep in enumerate(profile.deployments):
        name = dep.instance_prefix
        if name in seen:
            problems.append((("deployments", i, "name"),
                             f"deployments[{seen[name]}] and deployments[{i}] are both named {name!r}",
                             "give one of them a distinct `name`"))
        else:
            seen[name] = i
    taken: dict[int, int] = {}
    for i, dep in enumerate(profile.deployments):
        if not isinstance(dep.port, int):
            continue
        for port in range(dep.port, dep.port + dep.replicas):
            if port == profile.gateway.port:
                problems.append((("deployments", i, "port"),
                                 f"port {port} of {dep.instance_prefix!r} is the gateway's port",
                                 "pick another port, `port: auto`, or move gateway.port"))
            elif port in taken:
                other = profile.deployments[taken[port]]
                problems.append((("deployments", i, "port"),
                                 f"port {port} is taken by both {other.instance_prefix!r} (deployments[{taken[port]}]) "
                                 f"and {dep.instance_prefix!r} (deployments[{i}])"
                                 + (f"; {dep.replicas} replicas use {dep.port}-{dep.port + dep.replicas - 1}"
                                    if dep.replicas > 1 else "")
                                 + (f"; {other.replicas} replicas use {other.port}-"
                                    f"{int(other.port) + other.replicas - 1}" if other.replicas > 1 else ""),
                                 "give one of them another port or `port: auto`"))
            else:
                taken[port] = i
    return problems
