"""Priority lanes and quotas through the real gateway in front of a real, saturated worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from gw_harness import KEYS, Cluster
from gw_harness import GatewayThread, bearer
from prometheus_client import CollectorRegistry

from tei_manager.gateway.app import create_app

pytestmark = pytest.mark.slow  # real worker processes on loopback

FIN, HR, OPS = KEYS["finance"][0], KEYS["hr"][0], KEYS["ops"][0]
# ~60 words per input, 16 inputs: long enough that requests pile up behind one in flight.
HEAVY = {"model": "shared-minilm", "inputs": [("word%d " % i) * 60 for i in range(16)]}
LIGHT = {"model": "shared-minilm", "inputs": "a short query"}


def wait_until(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_high_priority_requests_overtake_queued_low_priority_load(cluster: Cluster) -> None:
    data = cluster.profile_data()
    for tenant in data["tenants"].values():
        tenant["quota"] = {"max_wait_ms": 120_000}  # nobody times out: only the order is under test
    app = create_app(cluster.profile(data), cluster.plan, keys=KEYS, registry=CollectorRegistry(),
                     instance_concurrency=1, gpu_metrics=False)
    done: list[tuple[str, int]] = []
    lock = threading.Lock()

    with GatewayThread(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        qos = server.gateway.qos

        def call(who: str, key: str, body: dict) -> None:
            r = client.post("/embed", json=body, headers=bearer(key))
            with lock:
                done.append((who, r.status_code))

        lows = 6
        with ThreadPoolExecutor(max_workers=lows + 3) as pool:
            for _ in range(lows):  # ops is `low`; one runs, the rest wait in the gateway
                pool.submit(call, "low", OPS, HEAVY)
            wait_until(lambda: qos.waiting("shared-minilm") >= lows - 1)
            for _ in range(3):  # finance is `high`
                pool.submit(call, "high", FIN, LIGHT)
            wait_until(lambda: qos.waiting("shared-minilm") >= lows + 1 or len(done) > 1)
    assert all(status == 200 for _, status in done), done
    order = [who for who, _ in done]
    last_high = max(i for i, who in enumerate(order) if who == "high")
    lows_before = order[:last_high].count("low")
    # The low request in flight when the high ones arrived may finish first (and, if it ended in
    # that instant, one more); every other low request waited behind all three high ones.
    assert lows_before <= 2, order


def test_a_tenant_over_its_token_budget_gets_429_and_others_do_not(cluster: Cluster) -> None:
    data = cluster.profile_data()
    data["tenants"]["ops"]["quota"] = {"tokens_per_minute": 300}
    app = create_app(cluster.profile(data), cluster.plan, keys=KEYS, registry=CollectorRegistry(), gpu_metrics=False)
    sentence = "the quick brown fox jumps over the lazy dog " * 4  # 38 tokens for MiniLM; the estimate says 46
    with GatewayThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        statuses, counted = [], 0
        for _ in range(30):
            r = client.post("/embed", json={"inputs": sentence}, headers=bearer(OPS))
            statuses.append(r.status_code)
            if r.status_code == 429:
                rejected = r
                break
            counted += int(r.headers["x-compute-tokens"])
        assert statuses[-1] == 429, statuses
        assert rejected.json()["error_type"] == "Overloaded"
        assert "tokens/min" in rejected.json()["error"]
        assert int(rejected.headers["retry-after"]) >= 1
        # The budget was charged with the counted tokens: admission stopped near 300 of them
        # (300 / 46-token estimates would have stopped after 6 requests, 228 counted tokens).
        assert 300 <= counted + 38 and counted <= 300 + 38
        # another tenant is not affected
        for _ in range(5):
            ok = client.post("/embed", json={"inputs": sentence}, headers=bearer(FIN))
            assert ok.status_code == 200
        metrics = client.get("/metrics").text
        assert 'tei_manager_gateway_rejections_total{model="minilm",reason="token_limit",tenant="ops"} 1.0' in metrics


def test_request_rate_limit_answers_429_with_retry_after(cluster: Cluster) -> None:
    data = cluster.profile_data()
    data["tenants"]["hr"]["quota"] = {"requests_per_second": 1, "burst": 2}
    app = create_app(cluster.profile(data), cluster.plan, keys=KEYS, registry=CollectorRegistry(), gpu_metrics=False)
    with GatewayThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        codes = [client.post("/embed", json={"inputs": "x"}, headers=bearer(HR)).status_code for _ in range(3)]
        assert codes[:2] == [200, 200] and codes[2] == 429
        assert client.post("/embed", json={"inputs": "x"}, headers=bearer(FIN)).status_code == 200


def test_waits_are_bounded(cluster: Cluster) -> None:
    data = cluster.profile_data()
    data["tenants"]["ops"]["quota"] = {"max_wait_ms": 0}
    app = create_app(cluster.profile(data), cluster.plan, keys=KEYS, registry=CollectorRegistry(),
                     instance_concurrency=1, gpu_metrics=False)
    with GatewayThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        qos = server.gateway.qos
        with ThreadPoolExecutor(max_workers=1) as pool:
            busy = pool.submit(client.post, "/embed", json=HEAVY, headers=bearer(FIN))
            wait_until(lambda: qos.in_flight("shared-minilm") == 1)
            r = client.post("/embed", json=LIGHT, headers=bearer(OPS))
            assert busy.result().status_code == 200
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"]
