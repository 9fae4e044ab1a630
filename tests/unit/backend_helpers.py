"""InstancePlan/Plan builders for the pure tests of diff, orchestrator and supervisor."""

from __future__ import annotations

from tei_manager.core.plan import InstancePlan, ModelCache, ModelSource, Plan, RuntimeSettings


def instance(name: str, *, port: int = 18000, profile: str = "p", tokens: int = 4096, image: str = "worker:dev",
             runtime: str = "fallback", gpu: int | None = None) -> InstancePlan:
    return InstancePlan(
        name=name, profile=profile, deployment=name, tenant="t", model_key="m",
        model=ModelSource(hub_id="BAAI/bge-m3"), served_model_name="BAAI/bge-m3", task="embed",
        runtime=runtime, image=image, gpu=gpu, bind="127.0.0.1", host_port=port,
        settings=RuntimeSettings(served_model_name="BAAI/bge-m3", max_batch_tokens=tokens,
                                 max_concurrent_requests=512, max_client_batch_size=32), hf_cache=ModelCache(volume="tei-manager-hf-cache"),
    )


def plan(*instances: InstancePlan, profile: str = "p") -> Plan:
    return Plan(profile=profile, instances=instances)
