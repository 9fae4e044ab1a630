"""The fallback worker (`fallback_worker/`): TEI's HTTP API on transformers, for what TEI cannot run.

It takes TEI's flags (plus `--rerank-mode bi-encoder`), runs on every device PyTorch runs on,
and ships both as an image (`profile.fallback_image`) and as a local executable.
"""

from __future__ import annotations

from tei_manager.core.models import Deployment, Profile
from tei_manager.core.plan import CONTAINER_HF_CACHE, InstancePlan, RuntimeSettings
from tei_manager.core.tuning import FALLBACK_VRAM
from tei_manager.runtimes.base import TEI_ROUTES, Device
from tei_manager.runtimes.tei import tei_args


class FallbackRuntime:
    name = "fallback"
    program = "tei-fallback-worker"
    executable: str | None = "tei-fallback-worker"
    #: Started as `python -m fallback_worker` where the console script is not installed.
    python_module = "fallback_worker"
    health_path = "/health"
    info_path = "/info"
    routes = TEI_ROUTES
    vram = FALLBACK_VRAM
    ranks_with_embeddings = True

    def image(self, profile: Profile, device: Device) -> str | None:
        return profile.fallback_image

    def obstacle(self, deployment: Deployment, profile: Profile, device: Device) -> str | None:
        return None

    def flash_attention(self, device: Device) -> bool:
        return True  # PyTorch SDPA: memory grows with tokens, not with the padded square

    def render_args(self, settings: RuntimeSettings) -> list[str]:
        args = tei_args(settings)
        if settings.rerank_mode == "bi-encoder":
            args += ["--rerank-mode", "bi-encoder"]
        return [*args, *settings.extra_args]

    def render_env(self, instance: InstancePlan, *, in_container: bool) -> dict[str, str]:
        if in_container:
            return {"HUGGINGFACE_HUB_CACHE": CONTAINER_HF_CACHE}
        # An empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU placement stays on the CPU.
        env = {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "" if instance.gpu is None else str(instance.gpu)}
        if instance.hf_cache.host_path is not None:
            env["HUGGINGFACE_HUB_CACHE"] = instance.hf_cache.host_path
        return env


RUNTIME = FallbackRuntime()
