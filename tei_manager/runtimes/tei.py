"""TEI (text-embeddings-router): the images HF publishes, one per compute capability and CPU arch.

Which image runs where (TEI README, "Docker images"; docs/architecture.md):

* x86_64 CPU: `cpu-<v>`; arm64 CPU: `cpu-arm64-<v>` (published from 1.9.4).
* x86_64 GPU: the per-architecture prefix of `TEI_ARCH_PREFIX` (no image below Turing 7.5; a
  compute-capability mismatch is fatal at startup, so an unknown capability is never guessed),
  or the multi-arch `cuda-<v>` image when the profile asks for `tei_image.variant: cuda`.
* arm64 GPU: only DGX Spark (compute capability 12.1, `121-<v>`, from 1.9.4); GH200/GB200 have
  no TEI image, so they get the fallback worker with that reason.
"""

from __future__ import annotations

from tei_manager.core.catalog import supported_arches, tei_supports, tei_tag, uses_flash_attention
from tei_manager.core.models import Deployment, Profile
from tei_manager.core.plan import CONTAINER_HF_CACHE, InstancePlan, RuntimeSettings
from tei_manager.core.tuning import TEI_VRAM
from tei_manager.runtimes.base import TEI_ROUTES, Device

#: First release with `cpu-arm64-*` and `121-*` images.
ARM64_SINCE = (1, 9, 4)


def version_tuple(version: str) -> tuple[int, ...]:
    """`1.9.4` -> (1, 9, 4); a moving `1.9` counts as (1, 9, 0): only an exact pin proves a release."""
    parts: list[int] = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def tei_args(s: RuntimeSettings) -> list[str]:
    """TEI's flags in the order of seed 004; optional ones only when the profile sets them."""
    args = [
        "--max-batch-tokens", str(s.max_batch_tokens),
        "--max-concurrent-requests", str(s.max_concurrent_requests),
        "--max-client-batch-size", str(s.max_client_batch_size),
        "--served-model-name", s.served_model_name,
    ]
    if s.revision:
        args += ["--revision", s.revision]
    if s.dtype:
        args += ["--dtype", s.dtype]
    if s.pooling:
        args += ["--pooling", s.pooling]
    if s.max_batch_requests:
        args += ["--max-batch-requests", str(s.max_batch_requests)]
    if s.tokenization_workers:
        args += ["--tokenization-workers", str(s.tokenization_workers)]
    if not s.auto_truncate:
        args += ["--auto-truncate", "false"]
    return args


class TeiRuntime:
    name = "tei"
    program = "text-embeddings-router"
    executable: str | None = None
    health_path = "/health"
    info_path = "/info"
    routes = TEI_ROUTES
    vram = TEI_VRAM
    ranks_with_embeddings = False

    def tag(self, profile: Profile, device: Device) -> str | None:
        """The image tag for `device`, or None when TEI publishes none."""
        version = profile.tei_image.version
        recent = version_tuple(version) >= ARM64_SINCE
        cc = device.gpu.compute_capability if device.gpu is not None else None
        if device.cpu_arch == "arm64":
            if cc is None:
                return f"cpu-arm64-{version}" if recent else None
            return f"121-{version}" if tuple(cc) == (12, 1) and recent else None
        if cc is not None and tuple(cc) == (12, 1) and not recent:
            return None
        if cc is not None and profile.tei_image.variant == "cuda":
            return f"cuda-{version}" if tei_supports(cc) else None
        return tei_tag(cc, version)

    def image(self, profile: Profile, device: Device) -> str | None:
        tag = self.tag(profile, device)
        return None if tag is None else f"{profile.tei_image.repository}:{tag}"

    def obstacle(self, deployment: Deployment, profile: Profile, device: Device) -> str | None:
        if deployment.tuning.dtype == "bfloat16":
            return "TEI's CUDA and CPU builds have no bfloat16 (dtype: bfloat16)"
        if deployment.rerank_mode == "bi-encoder":
            return "TEI cannot rank with an embedding model (rerank_mode: bi-encoder)"
        gpu = device.gpu
        if self.tag(profile, device) is not None:
            return None
        version = profile.tei_image.version
        if device.cpu_arch == "arm64":
            if gpu is None:
                return f"TEI publishes cpu-arm64 images from 1.9.4 (tei_image.version is {version})"
            if tuple(gpu.compute_capability) == (12, 1):
                return f"TEI publishes 121 images (DGX Spark) from 1.9.4 (tei_image.version is {version})"
            return (f"TEI has no arm64 image for compute capability {gpu.arch_label} (GPU {gpu.index}, "
                    f"{gpu.name}; GH200 and GB200 hosts are arm64); on arm64 it has CPU and 12.1 images")
        assert gpu is not None  # every x86_64 CPU has an image
        if tuple(gpu.compute_capability) == (12, 1):
            return f"TEI publishes 121 images (DGX Spark) from 1.9.4 (tei_image.version is {version})"
        return (f"TEI has no image for compute capability {gpu.arch_label} (GPU {gpu.index}, {gpu.name}); "
                f"it has images for {supported_arches()}")

    def flash_attention(self, device: Device) -> bool:
        # The Turing image runs without flash attention (padded batches); CPU batches are padded.
        return uses_flash_attention(device.gpu.compute_capability if device.gpu is not None else None)

    def render_args(self, settings: RuntimeSettings) -> list[str]:
        return [*tei_args(settings), *settings.extra_args]

    def render_env(self, instance: InstancePlan, *, in_container: bool) -> dict[str, str]:
        if in_container:
            return {"HUGGINGFACE_HUB_CACHE": CONTAINER_HF_CACHE}
        env = {"CUDA_VISIBLE_DEVICES": "" if instance.gpu is None else str(instance.gpu)}
        if instance.hf_cache.host_path is not None:
            env["HUGGINGFACE_HUB_CACHE"] = instance.hf_cache.host_path
        return env


RUNTIME = TeiRuntime()
