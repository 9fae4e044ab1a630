"""Real parts for the gateway tests: fallback-worker processes on loopback and a gateway served
by uvicorn in a background thread.

Workers are started exactly as the process backend would start them: the planner's Plan gives
each instance its command line (`InstancePlan.command(in_container=False)`).
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tei_manager.core.facts import HostFacts
from tei_manager.core.models import Profile
from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.core.planner import plan as make_plan
from tei_manager.gateway.server import server_options

REPO = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT_S = 240.0


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_block(count: int = 1) -> int:
    """The first of `count` consecutive free loopback ports, below the kernel's ephemeral range.

    A worker binds its port seconds after it was chosen (it loads a model first). A port from the
    ephemeral range (what binding port 0 hands out) can be taken meanwhile as the source port of any
    outgoing connection on the host (a health poll, a test client), and the worker then fails with
    "Address already in use". Ports below the range are never handed out that way.
    """
    import random

    top = _ephemeral_floor() - count
    for _ in range(200):
        base = random.randrange(20000, top)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


def plan_for(profile: Profile) -> Plan:
    """The real planner on a host without GPUs or Docker: every deployment is a local fallback worker."""
    return make_plan(profile, HostFacts())


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The editable install may predate fallback_worker/: make the package importable regardless.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


class WorkerProcess:
    """One `tei-fallback-worker` (run as `python -m fallback_worker`) for one planned instance."""

    def __init__(self, inst: InstancePlan, log_dir: Path, extra_args: Iterable[str] = ()) -> None:
        self.inst = inst
        self.url = f"http://127.0.0.1:{inst.host_port}"
        self.log_path = log_dir / f"{inst.name}.log"
        args = [sys.executable, "-m", "fallback_worker", *inst.command(in_container=False), "--dtype", "float32",
                *extra_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=worker_env(), cwd=REPO)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.inst.name} exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"worker {self.inst.name} not ready:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def start_workers(plan: Plan, log_dir: Path) -> dict[str, WorkerProcess]:
    """Start every instance of the plan at once (they load in parallel) and wait for all."""
    workers = {inst.name: WorkerProcess(inst, log_dir) for inst in plan.instances}
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    try:
        for worker in workers.values():
            worker.wait_ready(deadline)
    except BaseException:
        for worker in workers.values():
            worker.stop()
        raise
    return workers


class GatewayThread:
    """A gateway app served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.app = app
        self.port = free_port_block()
        self.url = f"http://127.0.0.1:{self.port}"
        # Served as `tei-manager serve` serves it (the header deadline included).
        options = {**server_options(), **options}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the gateway tests' cluster (shared by conftest.py and the test modules) ---------------------------

KEYS = {"finance": ["fin-key-1", "fin-key-2"], "hr": ["hr-key"], "ops": ["ops-key"]}
# Parameters of the tiny reranker the planner cannot look up (it is not a hub model).
TINY_NUMBERS = {"params_millions": 1, "hidden_size": 32, "num_layers": 2, "max_input_length": 128}


def profile_dict(minilm: Path, reranker: Path, ports: dict[str, int]) -> dict[str, Any]:
    """finance: MiniLM x2 (embed).  hr: a tiny cross-encoder (rerank) and a MiniLM that serves embed
    and bi-encoder rerank, marked `shared` so every tenant may use it.  ops: nothing of its own."""
    return {
        "name": "gateway-test",
        "models": {
            "minilm": {"id": "sentence-transformers/all-MiniLM-L6-v2", "task": "embed", "path": str(minilm)},
            "tiny-rr": {"id": "test/tiny-reranker", "task": "rerank", "path": str(reranker), **TINY_NUMBERS},
        },
        "tenants": {
            "finance": {"api_keys": [{"env": "FIN_KEY_1"}, {"env": "FIN_KEY_2"}], "priority": "high"},
            "hr": {"api_keys": [{"env": "HR_KEY"}]},
            "ops": {"api_keys": [{"env": "OPS_KEY"}], "priority": "low"},
        },
        "deployments": [
            {"tenant": "finance", "model": "minilm", "placement": "cpu", "replicas": 2,
             "port": ports["finance"], "runtime": "fallback"},
            {"tenant": "hr", "model": "tiny-rr", "placement": "cpu", "port": ports["hr"], "runtime": "fallback"},
            {"tenant": "hr", "model": "minilm", "name": "shared-minilm", "shared": True,
             "rerank_mode": "bi-encoder", "placement": "cpu", "port": ports["shared"], "runtime": "fallback"},
        ],
        "gateway": {"upstream_timeout_s": 30},
    }


@dataclass
class Cluster:
    base: dict[str, Any]
    plan: Plan
    workers: dict[str, WorkerProcess]

    def profile_data(self) -> dict[str, Any]:
        return copy.deepcopy(self.base)

    def profile(self, data: dict[str, Any] | None = None) -> Profile:
        return Profile.model_validate(data if data is not None else self.base)
