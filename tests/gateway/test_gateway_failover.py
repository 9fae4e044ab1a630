"""A replica killed mid-run: the gateway retries on the other one and no client request fails."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gw_harness import KEYS, profile_dict
from gw_harness import (
    GatewayThread,
    WorkerProcess,
    bearer,
    free_port_block,
    plan_for,
    start_workers,
)
from prometheus_client import CollectorRegistry

from tei_manager.core.models import Profile
from tei_manager.gateway.app import create_app

pytestmark = pytest.mark.slow  # real worker processes on loopback

FIN = KEYS["finance"][0]


@pytest.fixture(scope="module")
def two_replicas(model_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """Our own pair of MiniLM workers: this module kills one of them."""
    minilm, reranker = model_dirs
    base = free_port_block(4)
    data = profile_dict(minilm, reranker, {"finance": base, "hr": base + 2, "shared": base + 3})
    data["deployments"] = data["deployments"][:1]  # finance-minilm, 2 replicas
    profile = Profile.model_validate(data)
    plan = plan_for(profile)
    workers = start_workers(plan, tmp_path_factory.mktemp("gw-failover-logs"))
    try:
        yield profile, plan, workers
    finally:
        for worker in workers.values():
            worker.stop()


def test_a_hung_replica_loses_no_request(two_replicas) -> None:
    """SIGSTOP one of two replicas under load for a few seconds: requests stuck on it are cut when
    the prober takes it out of rotation and retried on the other; none fails.  SIGCONT brings it
    back into rotation."""
    profile, plan, workers = two_replicas
    victim: WorkerProcess = workers["finance-minilm-1"]
    app = create_app(profile, plan, keys=KEYS, registry=CollectorRegistry(), probe_interval_s=0.5, gpu_metrics=False)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    with GatewayThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:

        def hammer() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                r = client.post("/embed", json={"inputs": [f"request {i} sentence {j}" for j in range(8)]},
                                headers=bearer(FIN))
                with lock:
                    results.append((r.status_code, r.headers.get("x-tei-manager-instance", r.text)))

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(hammer) for _ in range(4)]
            deadline = time.monotonic() + 60
            while sum(1 for _, who in results if who == "finance-minilm-1") < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(victim.proc.pid, signal.SIGSTOP)
            try:
                out = time.monotonic() + 30
                while server.gateway.balancer.state(victim.url).healthy and time.monotonic() < out:
                    time.sleep(0.05)
                assert not server.gateway.balancer.state(victim.url).healthy
                time.sleep(2)  # keep serving on one replica for a while
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
            back = time.monotonic() + 30
            while not server.gateway.balancer.state(victim.url).healthy and time.monotonic() < back:
                time.sleep(0.05)
            stop.set()
            for f in futures:
                f.result()
        assert server.gateway.balancer.state(victim.url).healthy
        retries = [line for line in client.get("/metrics").text.splitlines()
                   if line.startswith("tei_manager_gateway_upstream_retries_total") and "finance-minilm-1" in line]

    assert [(status, who) for status, who in results if status != 200] == []
    assert retries and float(retries[0].split()[-1]) >= 1  # the stuck requests went elsewhere


def test_killing_a_replica_mid_run_fails_no_request(two_replicas) -> None:
    profile, plan, workers = two_replicas
    victim: WorkerProcess = workers["finance-minilm-1"]
    app = create_app(profile, plan, keys=KEYS, registry=CollectorRegistry(), probe_interval_s=0.5, gpu_metrics=False)
    results: list[tuple[int, str, float]] = []
    lock = threading.Lock()
    killed_at: list[float] = []

    with GatewayThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:

        def hammer(n: int) -> None:
            for i in range(n):
                r = client.post("/embed", json={"inputs": [f"request {i} sentence {j}" for j in range(8)]},
                                headers=bearer(FIN))
                with lock:
                    results.append((r.status_code, r.headers.get("x-tei-manager-instance", r.text), time.monotonic()))

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(hammer, 25) for _ in range(4)]
            deadline = time.monotonic() + 60
            while sum(1 for _, who, _ in results if who == "finance-minilm-1") < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            victim.kill()  # SIGKILL while requests are in flight on it
            killed_at.append(time.monotonic())
            for f in futures:
                f.result()

        metrics = client.get("/metrics").text
        gateway = server.gateway

    failures = [(status, who) for status, who, _ in results if status != 200]
    assert failures == []
    assert len(results) == 100
    after = [who for _, who, at in results if at > killed_at[0] + 0.5]
    assert after and set(after) == {"finance-minilm-0"}
    assert gateway.balancer.state(victim.url).healthy is False
    assert 'tei_manager_gateway_instance_up{instance="finance-minilm-1",model="minilm",tenant="finance"} 0.0' in metrics
