"""Everything one profile version means to the gateway, built from the Plan alone (+ keys).

Pure.  The Plan carries what the gateway needs (instances with their settings and tasks, the
tenants with their quotas, the gateway settings), so the configuration never looks anything up
in the Profile again.  The gateway keeps one `GatewayConfig` at a time and swaps it whole on
reload, so a request sees either the old or the new profile, never a mix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tei_manager.core.addresses import http_url
from tei_manager.core.models import GatewaySettings, Profile, Tenant
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
    profile: str = ""
    # Replica URL -> instance name, for instances started with an internal key that the gateway
    # must present (tei_manager.instance_keys derives it; the config stays free of secrets).
    protected: Mapping[str, str] = dataclasses.field(default_factory=dict)


def upstream_url(bind: str, port: int) -> str:
    """Where the gateway reaches an instance published on `bind:port`."""
    return http_url(bind, port)


def instance_capacity(inst: InstancePlan, override: int | None) -> int:
    """Requests the gateway lets one replica run at once.

    An explicit override wins.  With `max_batch_requests` set, two batches' worth: one running and
    one the runtime prefetches, so the device never idles while the gateway holds the rest in
    priority order.  Otherwise DEFAULT_INSTANCE_CONCURRENCY, never more than the runtime's own
    `max_concurrent_requests` (beyond which it answers 429 anyway).
    """
    if override is not None:
        return override
    settings = inst.settings
    wanted = 2 * settings.max_batch_requests if settings.max_batch_requests else DEFAULT_INSTANCE_CONCURRENCY
    return max(1, min(wanted, settings.max_concurrent_requests))


def routes_from_plan(plan: Plan, *, instance_concurrency: int | None = None) -> list[Route]:
    routes = []
    for deployment, instances in plan.deployments().items():
        first = instances[0]
        routes.append(
            Route(
                deployment=deployment,
                tenant=first.tenant,
                shared=first.shared,
                model_key=first.model_key,
                hub_id=first.model.hub_id,
                served_model_name=first.served_model_name,
                tasks=frozenset(first.tasks or (first.task,)),
                task=first.task,
                replicas=tuple(upstream_url(i.bind, i.host_port) for i in instances),
                replica_names=tuple(i.name for i in instances),
                capacity_per_replica=instance_capacity(first, instance_concurrency),
                max_client_batch_size=first.settings.max_client_batch_size,
                # TEI and the fallback worker take one permit per input (429 beyond); the gateway
                # admits in the same unit so it never sends what a replica would refuse (qos.py).
                inputs_per_replica=min(i.settings.max_concurrent_requests for i in instances),
            )
        )
    return routes


def tenant_limits(tenants: Mapping[str, Tenant]) -> dict[str, TenantLimits]:
    return {
        name: TenantLimits(
            priority=t.priority,
            requests_per_second=t.quota.requests_per_second,
            burst=t.quota.burst,
            tokens_per_minute=t.quota.tokens_per_minute,
            max_concurrent=t.quota.max_concurrent,
            max_wait_ms=t.quota.max_wait_ms,
        )
        for name, t in tenants.items()
    }


def build_config(
    profile: Profile | None,
    plan: Plan,
    keys: Mapping[str, Iterable[str]],
    *,
    instance_concurrency: int | None = None,
) -> GatewayConfig:
    """`keys` maps tenant -> plain API keys (from `tei_manager.profiles.resolve_secrets`).

    Routes come from `plan` alone.  Tenants and gateway settings too, unless `profile` is given:
    then its tenants and settings win (they never change the plan; callers that edit them in
    place, like the gateway tests, need not re-plan).  TODO-for-merge: once `create_app` takes
    the plan only, drop the `profile` parameter."""
    tenants = profile.tenants if profile is not None else plan.tenants
    routes = routes_from_plan(plan, instance_concurrency=instance_concurrency)
    names = {url: name for r in routes for url, name in zip(r.replicas, r.replica_names, strict=True)}
    return GatewayConfig(
        table=RouteTable(routes),
        keys=KeyRing({t: list(k) for t, k in keys.items() if t in tenants}),
        tenants=tenant_limits(tenants),
        settings=profile.gateway if profile is not None else plan.gateway,
        open=not tenants,
        instance_names=names,
        profile=plan.profile,
        protected={upstream_url(i.bind, i.host_port): i.name for i in plan.instances if i.internal_auth},
    )
