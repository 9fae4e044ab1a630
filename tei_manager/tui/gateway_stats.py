"""Turn two scrapes of the gateway's Prometheus `/metrics` into rates the dashboard shows.

Counters only ever grow, so "requests per second" and "p99 latency right now" come from the
difference between the previous scrape and this one; the first scrape has no rates yet.
Parsing is prometheus_client's own text parser; this module only picks the families the
gateway exports (`tei_manager.metrics` owns their names) and does the arithmetic.  No I/O here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from tei_manager.metrics import PREFIX

# Family names as the parser reports them (counters without their `_total` suffix).
REQUESTS = f"{PREFIX}_requests"
LATENCY = f"{PREFIX}_request_duration_seconds"
REJECTIONS = f"{PREFIX}_rejections"


@dataclass
class _Series:
    """Cumulative numbers for one tenant or one instance at one moment."""

    requests: float = 0.0
    rejections: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count


@dataclass(frozen=True)
class Scrape:
    """One parsed `/metrics` page, reduced to what the dashboard needs."""

    at: float
    tenants: Mapping[str, _Series]
    instances: Mapping[str, _Series]


@dataclass(frozen=True)
class TenantRow:
    tenant: str
    qps: float | None
    p99_s: float | None
    rejections: int
    rejected_qps: float | None
    quota_use: float | None = None  # qps / the tenant's requests_per_second quota


@dataclass(frozen=True)
class InstanceTraffic:
    """Requests the gateway routed to one instance (health and restarts come from `status`)."""

    qps: float | None
    p99_s: float | None


@dataclass(frozen=True)
class GatewayStats:
    tenants: tuple[TenantRow, ...]
    instances: Mapping[str, InstanceTraffic]


def parse(text: str, *, at: float) -> Scrape:
    """Reduce a Prometheus text page to per-tenant and per-instance cumulative series."""
    tenants: dict[str, _Series] = defaultdict(_Series)
    instances: dict[str, _Series] = defaultdict(_Series)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            tenant = labels.get("tenant")
            instance = labels.get("instance")
            if family.name == REQUESTS and sample.name.endswith("_total"):
                if tenant is not None:
                    tenants[tenant].requests += sample.value
                if instance:
                    instances[instance].requests += sample.value
            elif family.name == REJECTIONS and sample.name.endswith("_total"):
                if tenant is not None:
                    tenants[tenant].rejections += sample.value
            elif family.name == LATENCY and sample.name.endswith("_bucket"):
                bound = float(labels["le"])
                for key, table in ((tenant, tenants), (instance, instances)):
                    if key:
                        buckets = table[key].buckets
                        buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Scrape(at=at, tenants=dict(tenants), instances=dict(instances))


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket (as PromQL does).

    None when the histogram is empty.  When the quantile falls in the `+Inf` bucket the
    largest finite bound is the best honest answer.
    """
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _window(now: _Series, before: _Series | None) -> _Series:
    if before is None:
        return now
    return _Series(
        requests=max(now.requests - before.requests, 0.0),
        rejections=max(now.rejections - before.rejections, 0.0),
        buckets={b: max(c - before.buckets.get(b, 0.0), 0.0) for b, c in now.buckets.items()},
    )


def compare(
    previous: Scrape | None, current: Scrape, quotas: Mapping[str, float] | None = None
) -> GatewayStats:
    """Rates over the interval between two scrapes; p99 over the same interval.

    `quotas` maps a tenant to its requests-per-second quota; quota use is its share of it.

    With no previous scrape there is no interval: rates are unknown and p99 covers the
    whole life of the gateway, which is still worth showing.
    """
    elapsed = (current.at - previous.at) if previous else 0.0

    def per_second(delta: float) -> float | None:
        return delta / elapsed if elapsed > 0 else None

    rows = []
    for tenant in sorted(current.tenants):
        now = current.tenants[tenant]
        win = _window(now, previous.tenants.get(tenant) if previous else None)
        qps = per_second(win.requests)
        quota = (quotas or {}).get(tenant)
        rows.append(
            TenantRow(
                tenant=tenant,
                qps=qps,
                p99_s=quantile(win.buckets, 0.99),
                rejections=int(now.rejections),
                rejected_qps=per_second(win.rejections),
                quota_use=qps / quota if qps is not None and quota else None,
            )
        )
    traffic = {}
    for name, now in sorted(current.instances.items()):
        win = _window(now, previous.instances.get(name) if previous else None)
        traffic[name] = InstanceTraffic(qps=per_second(win.requests), p99_s=quantile(win.buckets, 0.99))
    return GatewayStats(tenants=tuple(rows), instances=traffic)
