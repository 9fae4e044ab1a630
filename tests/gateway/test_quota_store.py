"""The shared quota store against a real redis-server: several gateways, one quota."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.redis_server import RedisServer, redis_server

from tei_manager.gateway.qos import AdmissionController, TenantLimits
from tei_manager.gateway.quota_store import MemoryQuotaStore, QuotaStoreUnavailable, RedisQuotaStore


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


async def test_two_gateways_share_one_request_rate(redis: RedisServer) -> None:
    limits = TenantLimits(requests_per_second=5, burst=5)
    a = RedisQuotaStore(redis.url, profile="p")
    b = RedisQuotaStore(redis.url, profile="p")
    began = time.monotonic()
    admitted = 0
    for i in range(40):
        if await (a if i % 2 else b).take("finance", limits, 0) is None:
            admitted += 1
    elapsed = time.monotonic() - began
    assert 5 <= admitted <= 5 + int(5 * elapsed) + 1
    rejection = await a.take("finance", limits, 0)
    assert rejection is not None and rejection.reason == "rate_limit"
    assert rejection.retry_after_header == "1"
    assert "5 requests/s" in rejection.message
    await a.close()
    await b.close()


async def test_profiles_and_tenants_have_their_own_buckets(redis: RedisServer) -> None:
    limits = TenantLimits(requests_per_second=1, burst=1)
    store = RedisQuotaStore(redis.url, profile="p")
    other_profile = RedisQuotaStore(redis.url, profile="q")
    assert await store.take("finance", limits, 0) is None
    assert await store.take("finance", limits, 0) is not None
    assert await store.take("hr", limits, 0) is None
    assert await other_profile.take("finance", limits, 0) is None
    await store.close()
    await other_profile.close()


async def test_token_budget_with_refunds_and_debts(redis: RedisServer) -> None:
    limits = TenantLimits(tokens_per_minute=600)
    a = RedisQuotaStore(redis.url, profile="p")
    b = RedisQuotaStore(redis.url, profile="p")
    assert await a.take("hr", limits, 500) is None
    await b.reconcile("hr", limits, estimated=500, actual=100)  # counted fewer: 400 back
    level = await a.token_level("hr", limits)
    assert level is not None and 500 <= level <= 502
    await a.reconcile("hr", limits, estimated=100, actual=1300)  # counted more: a debt of 1200
    rejection = await b.take("hr", limits, 10)
    assert rejection is not None and rejection.reason == "token_limit"
    assert 60 <= rejection.retry_after_s <= 72  # (10 + ~700 owed) tokens at 10 tokens/s
    await a.close()
    await b.close()


async def test_the_same_decisions_as_one_gateway_in_memory(redis: RedisServer) -> None:
    limits = TenantLimits(requests_per_second=2, burst=4, tokens_per_minute=1000)
    admission = AdmissionController(time.monotonic)
    admission.configure_tenant("t", limits)
    memory = MemoryQuotaStore(admission)
    shared = RedisQuotaStore(redis.url, profile="p")
    script = [300, 300, 100, 500, 50, 50, 400]
    decisions = {}
    for name, store in (("memory", memory), ("redis", shared)):
        outcome = []
        for tokens in script:
            rejection = await store.take("t", limits, tokens)
            outcome.append(rejection.reason if rejection else "ok")
        decisions[name] = outcome
    assert decisions["memory"] == decisions["redis"] == ["ok", "ok", "ok", "token_limit", "ok", "rate_limit", "rate_limit"]
    await shared.close()


async def test_unreachable_redis_fails_open_with_one_warning(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    limits = TenantLimits(requests_per_second=1, burst=1)
    store = RedisQuotaStore(redis.url, profile="p", on_unavailable="open", retry_interval_s=0.2)
    assert await store.take("t", limits, 0) is None
    redis.kill()
    with caplog.at_level(logging.WARNING, logger="tei_manager.gateway.quota_store"):
        began = time.monotonic()
        results = [await store.take("t", limits, 0) for _ in range(50)]
        assert time.monotonic() - began < 2  # no waiting on a dead server for every request
    assert results == [None] * 50  # admitted without quota checks
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "on_unavailable: open" in warnings[0].getMessage()
    redis.start()
    time.sleep(0.3)
    assert await store.take("t", limits, 0) is None  # a fresh server: a full bucket
    assert await store.take("t", limits, 0) is not None  # enforced again
    await store.close()


async def test_unreachable_redis_fails_closed_when_the_profile_says_so(redis: RedisServer) -> None:
    limits = TenantLimits(tokens_per_minute=100)
    store = RedisQuotaStore(redis.url, profile="p", on_unavailable="closed")
    redis.kill()
    with pytest.raises(QuotaStoreUnavailable):
        await store.take("t", limits, 1)
    with pytest.raises(QuotaStoreUnavailable):  # still refused while Redis is skipped
        await store.take("t", limits, 1)
    assert await store.take("t", TenantLimits(), 1) is None  # a tenant without quotas needs no store
    await store.close()
