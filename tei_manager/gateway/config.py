"""Everything one profile version means to the gateway, built from Profile + Plan + keys.

Pure.  The gateway keeps one `GatewayConfig` at a time and swaps it whole on reload, so a
request sees either the old or the new profile, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tei_manager.core.models import GatewaySettings, Profile
from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.gateway.keys import KeyRing
from tei_manager.gateway.qos import TenantLimits
from tei_manager.gateway.routing import Route, RouteTable

# Requests one replica gets at once when nothing better is known.  Beyond it, requests wait in
# the gateway (where priorities apply) instead of in the runtime's FIFO queue (where they do not).
DEFAULT_INSTANCE_CONCURRENCY = 32


@dataclass(frozen=True)
class GatewayConfig:
    table: RouteTable
    keys: KeyRing
    tenants: Mapping[str, TenantLimits]
    settings: GatewaySettings
    # A profile without a `tenants` section has nobody to authenticate: the gateway is open.
    open: bool
    instance_names: Mapping[str, str]  # replica URL -> instance name (metrics labels)


def upstream_url(bind: str, port: int) -> str:
    """Where the gateway reaches an instance published on `bind:port`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def instance_capacity(profile: Profile, deployment: str, override: int | None) -> int:
    """Requests the gateway lets one replica run at once.

    An explicit override wins.  With `max_batch_requests` set, two batches' worth: one running and
    one the runtime prefetches, so the device never idles while the gateway holds the rest in
    priority order.  Otherwise DEFAULT_INSTANCE_CONCURRENCY, never more than the runtime's own
    `max_concurrent_requests` (beyond which it answers 429 anyway).
    """
    if override is not None:
        return override
    dep = next((d for d in profile.deployments if d.instance_prefix == deployment), None)
    if dep is None:
        return DEFAULT_INSTANCE_CONCURRENCY
    tuning = dep.tuning
    wanted = 2 * tuning.max_batch_requests if tuning.max_batch_requests else DEFAULT_INSTANCE_CONCURRENCY
    return max(1, min(wanted, tuning.max_concurrent_requests))


def _client_batch(profile: Profile, deployment: str) -> int:
    dep = next((d for d in profile.deployments if d.instance_prefix == deployment), None)
    return dep.tuning.max_client_batch_size if dep is not None else 32


def _tasks(profile: Profile, inst: InstancePlan) -> frozenset[str]:
    tasks = {inst.task}
    dep = next((d for d in profile.deployments if d.instance_prefix == inst.deployment), None)
    if dep is not None:
        spec = profile.models.get(dep.model)
        if spec is not None:
            tasks.add(spec.task)
        if dep.rerank_mode == "bi-encoder":
            tasks.add("rerank")  # the fallback worker serves /rerank from the embedding model
    return frozenset(tasks)


def routes_from_plan(profile: Profile, plan: Plan, *, instance_concurrency: int | None = None) -> list[Route]:
    by_deployment: dict[str, list[InstancePlan]] = {}
    for inst in plan.instances:
        by_deployment.setdefault(inst.deployment, []).append(inst)
    routes = []
    for deployment, instances in by_deployment.items():
        instances.sort(key=lambda i: i.replica)
        first = instances[0]
        routes.append(
            Route(
                deployment=deployment,
                tenant=first.tenant,
                shared=first.shared,
                model_key=first.model_key,
                hub_id=first.model.hub_id,
                served_model_name=first.served_model_name,
                tasks=_tasks(profile, first),
                task=first.task,
                replicas=tuple(upstream_url(i.bind, i.host_port) for i in instances),
                replica_names=tuple(i.name for i in instances),
                capacity_per_replica=instance_capacity(profile, deployment, instance_concurrency),
                max_client_batch_size=_client_batch(profile, deployment),
            )
        )
    return routes


def tenant_limits(profile: Profile) -> dict[str, TenantLimits]:
    return {
        name: TenantLimits(
            priority=t.priority,
            requests_per_second=t.quota.requests_per_second,
            burst=t.quota.burst,
            tokens_per_minute=t.quota.tokens_per_minute,
            max_concurrent=t.quota.max_concurrent,
            max_wait_ms=t.quota.max_wait_ms,
        )
        for name, t in profile.tenants.items()
    }


def build_config(
    profile: Profile,
    plan: Plan,
    keys: Mapping[str, Iterable[str]],
    *,
    instance_concurrency: int | None = None,
) -> GatewayConfig:
    """`keys` maps tenant -> plain API keys (from `tei_manager.profiles.resolve_secrets`)."""
    routes = routes_from_plan(profile, plan, instance_concurrency=instance_concurrency)
    names = {url: name for r in routes for url, name in zip(r.replicas, r.replica_names)}
    return GatewayConfig(
        table=RouteTable(routes),
        keys=KeyRing({t: list(k) for t, k in keys.items() if t in profile.tenants}),
        tenants=tenant_limits(profile),
        settings=profile.gateway,
        open=not profile.tenants,
        instance_names=names,
    )
