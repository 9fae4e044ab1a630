"""Per-tenant and per-instance rates from the gateway's own metrics page (GatewayMetrics)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from tei_manager.metrics import GatewayMetrics
from tei_manager.tui.gateway_stats import compare, parse, quantile


def gateway() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry(), gpu_collector=False)


def page(metrics: GatewayMetrics) -> str:
    return metrics.render().decode()


def test_rates_come_from_the_difference_between_two_scrapes() -> None:
    metrics = gateway()
    for _ in range(5):
        metrics.request_done(tenant="search", model="bge-m3", route="/embed", instance="search-bge-m3",
                             status=200, seconds=0.02)
    first = parse(page(metrics), at=100.0)
    for _ in range(30):
        metrics.request_done(tenant="search", model="bge-m3", route="/embed", instance="search-bge-m3",
                             status=200, seconds=0.02)
    metrics.rejected(tenant="search", model="bge-m3", reason="quota")
    metrics.rejected(tenant="search", model="bge-m3", reason="queue_full")

    stats = compare(first, parse(page(metrics), at=110.0), {"search": 6.0})

    (row,) = stats.tenants
    assert row.tenant == "search"
    assert row.qps == pytest.approx(3.0)  # 30 requests in 10 s
    assert row.rejections == 2 and row.rejected_qps == pytest.approx(0.2)
    assert row.quota_use == pytest.approx(0.5)
    assert stats.instances["search-bge-m3"].qps == pytest.approx(3.0)
    assert 0.015 < (row.p99_s or 0) <= 0.02


def test_a_first_scrape_has_no_rates_yet_but_a_p99() -> None:
    metrics = gateway()
    metrics.request_done(tenant="hr", model="m", route="/embed", instance="hr-m", status=200, seconds=0.3)
    stats = compare(None, parse(page(metrics), at=1.0))
    (row,) = stats.tenants
    assert row.qps is None and row.rejected_qps is None and row.quota_use is None
    assert row.p99_s is not None and 0.25 < row.p99_s <= 0.3


def test_p99_covers_only_the_last_interval() -> None:
    metrics = gateway()
    for _ in range(100):
        metrics.request_done(tenant="t", model="m", route="/embed", instance="i", status=200, seconds=4.0)
    first = parse(page(metrics), at=0.0)
    for _ in range(100):
        metrics.request_done(tenant="t", model="m", route="/embed", instance="i", status=200, seconds=0.004)
    stats = compare(first, parse(page(metrics), at=5.0))
    assert (stats.tenants[0].p99_s or 1) <= 0.005  # the slow burst before the interval is gone


def test_quantile_of_an_empty_histogram_is_unknown() -> None:
    assert quantile({}, 0.99) is None
    assert quantile({0.1: 0.0, float("inf"): 0.0}, 0.99) is None
    assert quantile({0.1: 0.0, 1.0: 0.0, float("inf"): 5.0}, 0.99) == 1.0  # beyond the last finite bound
