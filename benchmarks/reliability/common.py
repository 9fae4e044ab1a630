"""Shared parts of the reliability scripts: a quickstart-like deployment of MiniLM workers run by the
real process backend and supervisor, a gateway in its own process, and a closed-loop client.

Everything listens on 127.0.0.1; every run is bounded in requests and time and cleans up after
itself (instances removed, state in a temporary directory).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "gateway"))

KEY = "reliability-key"


def profile_data(name: str, port: int, replicas: int, gateway_port: int) -> dict[str, Any]:
    from fixtures.tiny_models import minilm_path

    return {
        "name": name,
        "models": {"minilm": {"id": "sentence-transformers/all-MiniLM-L6-v2", "task": "embed",
                              "path": str(minilm_path())}},
        "tenants": {"demo": {"api_keys": [{"env": "RELIABILITY_KEY"}]}},
        "deployments": [{"name": "demo-embed", "tenant": "demo", "model": "minilm", "placement": "cpu",
                         "runtime": "fallback", "port": port, "replicas": replicas,
                         "tuning": {"max_batch_tokens": 4096, "max_concurrent_requests": 64,
                                    "max_client_batch_size": 16}}],
        "gateway": {"bind": "127.0.0.1", "port": gateway_port, "upstream_timeout_s": 30},
    }


@dataclass
class Deployment:
    profile_path: Path
    plan: Any
    backend: Any
    gateway_url: str
    gateway_pid: int
    supervisor_events: list[Any] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        return {o.name: o.pid for o in self.backend.list(self.plan.profile) if o.pid}


@contextmanager
def deployment(name: str, replicas: int, *, supervise: bool) -> Iterator[Deployment]:
    """apply (process backend) -> gateway process -> optional supervisor thread; all torn down after."""
    from gw_harness import free_port_block

    with tempfile.TemporaryDirectory(prefix="tei-reliability-") as tmp:
        os.environ["TEI_MANAGER_STATE_DIR"] = tmp
        os.environ["RELIABILITY_KEY"] = KEY
        from tei_manager.backends.process import ProcessBackend
        from tei_manager.core.models import Profile
        from tei_manager.core.planner import plan as make_plan
        from tei_manager.health import BackoffPolicy
        from tei_manager.orchestrator import apply, down
        from tei_manager.probe import host_facts
        from tei_manager.supervisor import Supervisor

        base = free_port_block(replicas + 1)
        data = profile_data(name, base, replicas, base + replicas)
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        plan = make_plan(Profile.model_validate(data), host_facts(docker=False))
        backend = ProcessBackend()
        apply(plan, backend, timeout_s=300)
        log = open(Path(tmp) / "gateway.log", "wb")  # noqa: SIM115 - outlives this block; closed in finally
        gw = subprocess.Popen([sys.executable, __file__, str(path)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        url = f"http://127.0.0.1:{base + replicas}"
        stop = threading.Event()
        sup_thread = None
        dep = Deployment(path, plan, backend, url, gw.pid)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if gw.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((Path(tmp) / "gateway.log").read_text()[-3000:])
                time.sleep(0.2)
            if supervise:
                policy = BackoffPolicy(failure_threshold=2, initial_delay_s=1, startup_grace_s=60)
                sup = Supervisor(backend, plan, policy=policy, on_event=dep.supervisor_events.append, record=False)
                sup_thread = threading.Thread(target=sup.run, args=(stop,), kwargs={"interval_s": 1.0}, daemon=True)
                sup_thread.start()
            yield dep
        finally:
            stop.set()
            if sup_thread is not None:
                sup_thread.join(15)
            gw.terminate()
            gw.wait(15)
            log.close()
            down(plan.profile, backend)


def max_rss_mib(pid: int) -> float:
    """Peak resident memory of a live process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def instance_up(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    up = {}
    for line in text.splitlines():
        if line.startswith("tei_manager_gateway_instance_up{"):
            name = line.split('instance="', 1)[1].split('"', 1)[0]
            up[name] = float(line.split()[-1])
    return up


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    lost: int = 0  # no HTTP answer at all (connection error or client timeout)

    @property
    def failed(self) -> int:
        return self.lost + sum(n for s, n in self.statuses.items() if s != 200)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


async def load(url: str, clients: int, inputs: int, stop: asyncio.Event, tally: Tally, max_requests: int) -> None:
    """`clients` closed-loop clients, `inputs` texts per /embed, until `stop` or `max_requests`."""
    headers = {"Authorization": f"Bearer {KEY}"}

    async def client(n: int, http: httpx.AsyncClient) -> None:
        i = 0
        while not stop.is_set() and tally.sent < max_requests:
            i += 1
            tally.sent += 1
            body = {"inputs": [f"client {n} request {i} text {j}" for j in range(inputs)]}
            try:
                r = await http.post(url + "/embed", json=body, headers=headers)
                tally.statuses[r.status_code] += 1
            except httpx.HTTPError:
                tally.lost += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))


def _serve(profile_path: str) -> None:
    """The gateway process: serve the profile as `tei-manager serve` does (fixed ports: the plan
    is the live one)."""
    import uvicorn

    from tei_manager.core.planner import plan as make_plan
    from tei_manager.gateway.app import create_app
    from tei_manager.gateway.server import server_options
    from tei_manager.probe import host_facts
    from tei_manager.profiles import load_profile, resolve_secrets

    profile = load_profile(profile_path)
    plan = make_plan(profile, host_facts(docker=False))
    app = create_app(profile, plan, keys=resolve_secrets(profile), gpu_metrics=False, probe_interval_s=1.0,
                     follow_supervisor=False)
    uvicorn.run(app, host=profile.gateway.bind, port=profile.gateway.port, log_level="warning",
                access_log=False, **server_options())


if __name__ == "__main__":
    _serve(sys.argv[1])
