"""Hot reload: a changed profile (keys, quotas, routes) takes effect without dropping requests,
through the library (file watch) and through `tei-manager serve` (SIGHUP, secret files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from gw_harness import Cluster
from gw_harness import (
    REPO,
    GatewayThread,
    bearer,
    free_port_block,
    plan_for,
    worker_env,
)
from prometheus_client import CollectorRegistry

from tei_manager.gateway.app import create_app
from tei_manager.profiles import load_profile_with_source, resolve_secrets

pytestmark = pytest.mark.slow  # real worker processes on loopback

HEAVY = {"model": "shared-minilm", "inputs": [("word%d " % i) * 60 for i in range(16)]}


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)  # atomic, as editors and config management do


def env_keyed(data: dict) -> dict:
    data["tenants"]["finance"]["api_keys"] = [{"env": "GW_RELOAD_FIN"}]
    data["tenants"]["hr"]["api_keys"] = [{"env": "GW_RELOAD_HR"}]
    data["tenants"]["ops"]["api_keys"] = [{"env": "GW_RELOAD_OPS"}]
    return data


def test_profile_edit_reloads_keys_and_quotas_without_dropping_requests(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"GW_RELOAD_FIN": "fin-old", "GW_RELOAD_FIN_NEW": "fin-new",
                        "GW_RELOAD_HR": "hr-1", "GW_RELOAD_OPS": "ops-1"}.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "gateway.yaml"
    data = env_keyed(cluster.profile_data())
    write(path, data)

    def load():
        profile, source = load_profile_with_source(path)
        return profile, plan_for(profile), resolve_secrets(profile, source=source)

    profile, plan, keys = load()
    app = create_app(profile, plan, keys=keys, registry=CollectorRegistry(), reload=load,
                     watch_path=str(path), watch_interval_s=0.1, gpu_metrics=False)
    with GatewayThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        def reloads(result: str) -> float:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith(f'tei_manager_gateway_reloads_total{{result="{result}"}}'):
                    return float(line.split()[-1])
            return 0.0

        assert client.post("/embed", json={"inputs": "x"}, headers=bearer("fin-old")).status_code == 200
        with ThreadPoolExecutor(max_workers=2) as pool:
            in_flight = [pool.submit(client.post, "/embed", json=HEAVY, headers=bearer("fin-old")) for _ in range(2)]
            # rotate finance's key, cap hr at one request per second, take the shared flag away
            data["tenants"]["finance"]["api_keys"] = [{"env": "GW_RELOAD_FIN_NEW"}]
            data["tenants"]["hr"]["quota"] = {"requests_per_second": 1, "burst": 1}
            data["deployments"][2]["shared"] = False
            write(path, data)
            wait_for(lambda: reloads("ok") >= 1)
            assert [f.result().status_code for f in in_flight] == [200, 200]  # started before: finished

        assert client.post("/embed", json={"inputs": "x"}, headers=bearer("fin-old")).status_code == 401
        assert client.post("/embed", json={"inputs": "x"}, headers=bearer("fin-new")).status_code == 200
        hr = [client.post("/embed", json={"inputs": "x"}, headers=bearer("hr-1")).status_code for _ in range(2)]
        assert hr == [200, 429]
        r = client.post("/embed", json={"inputs": "x"}, headers=bearer("ops-1"))
        assert r.status_code == 404  # ops used the shared deployment; it is hr's alone now

        path.write_text("models: [not, a, mapping")  # a broken edit keeps the last good profile
        wait_for(lambda: reloads("error") >= 1)
        assert client.post("/embed", json={"inputs": "x"}, headers=bearer("fin-new")).status_code == 200


def test_serve_command_routes_and_reloads_secret_files_on_sighup(cluster: Cluster, tmp_path: Path) -> None:
    key_file = tmp_path / "finance.key"
    key_file.write_text("fin-file-1\n")
    data = cluster.profile_data()
    data["tenants"]["finance"]["api_keys"] = [{"file": str(key_file)}]
    data["tenants"]["hr"]["api_keys"] = [{"env": "GW_SERVE_HR"}]
    data["tenants"]["ops"]["api_keys"] = [{"env": "GW_SERVE_OPS"}]
    port = free_port_block()
    data["gateway"]["port"] = port
    path = tmp_path / "serve.yaml"
    write(path, data)
    env = {**worker_env(), "GW_SERVE_HR": "hr-s", "GW_SERVE_OPS": "ops-s", "TEI_MANAGER_STATE_DIR": str(tmp_path)}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tei_manager.cli.app", "serve", str(path), "--backend", "process", "--no-watch"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60)
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/embed", json={"inputs": "x"}, headers=bearer("fin-file-1")).status_code == 200
            assert client.post("/v1/rerank", json={"model": "tiny-rr", "query": "q", "documents": ["a"]},
                               headers=bearer("hr-s")).status_code == 200
            key_file.write_text("fin-file-2\n")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: client.post("/embed", json={"inputs": "x"},
                                         headers=bearer("fin-file-2")).status_code == 200)
            assert client.post("/embed", json={"inputs": "x"}, headers=bearer("fin-file-1")).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "fin-file" not in output  # keys never reach the log
