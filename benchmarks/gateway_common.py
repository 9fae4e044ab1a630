"""Shared parts of the gateway benchmarks: start a worker, a gateway and nginx on loopback, and a
closed-loop load generator.  Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures.tiny_models import minilm_path  # noqa: F401  (re-exported for the benchmarks)

from tei_manager.gateway.upstream import ConnectionPool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return e


def wait_http(url: str, proc: subprocess.Popen | None, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(args: list[str], log: Path, ready_url: str, extra_env: dict[str, str] | None = None) -> Iterator[None]:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env={**env(), **(extra_env or {})},
                                cwd=REPO)
        try:
            wait_http(ready_url, proc)
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def worker(model_dir: Path, port: int, workdir: Path, *extra: str, threads: int | None = None) -> Iterator[str]:
    """A fallback worker; `threads` caps torch's CPU threads (OMP_NUM_THREADS) so that on a small
    host the model does not take every core from the gateway and the load generator."""
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "fallback_worker", "--model-id", str(model_dir), "--port", str(port),
            "--hostname", "127.0.0.1", "--dtype", "float32", *extra]
    threads_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    with process(args, workdir / f"worker-{port}.log", url + "/health", threads_env):
        yield url


def write_profile(path: Path, model_dir: Path, worker_port: int, gateway_port: int,
                  tenants: dict[str, dict]) -> None:
    data = {
        "name": "gateway-bench",
        "models": {"minilm": {"id": "sentence-transformers/all-MiniLM-L6-v2", "task": "embed", "path": str(model_dir)}},
        "tenants": tenants,
        "deployments": [{"tenant": next(iter(tenants)), "model": "minilm", "placement": "cpu", "shared": True,
                         "port": worker_port, "runtime": "fallback"}],
        "gateway": {"port": gateway_port},
    }
    path.write_text(yaml.safe_dump(data))


@contextmanager
def gateway(profile: Path, port: int, workdir: Path, keys: dict[str, str], *extra: str,
            nice: int | None = None) -> Iterator[str]:
    """`tei-manager serve` as its own process; `nice` runs it (and nothing else) at that niceness."""
    url = f"http://127.0.0.1:{port}"
    args = (["nice", "-n", str(nice)] if nice is not None else []) + [sys.executable, "-m", "tei_manager.cli.app", "serve", str(profile), "--backend", "process",
            "--no-watch", "--log-level", "warning", *extra]
    with process(args, workdir / "gateway.log", url + "/health",
                 {**keys, "TEI_MANAGER_STATE_DIR": str(workdir / "state")}):
        yield url


# nginx as an unprivileged foreground process: every path it writes lives in the run's own directory.
NGINX_HEAD = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
"""

NGINX_CONF = NGINX_HEAD + """  upstream worker {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


STATIC_CONF = NGINX_HEAD + """  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 100000;
    location = /health {{ return 200 ''; }}
    location = /embed {{
      default_type application/json;
      add_header x-compute-tokens 9;
      return 200 '{body}';
    }}
  }}
}}
"""


@contextmanager
def _nginx(conf_text: str, port: int, workdir: Path, name: str, nice: int | None = None) -> Iterator[str]:
    conf_dir = workdir / name
    conf_dir.mkdir(exist_ok=True)
    conf = conf_dir / "nginx.conf"
    conf.write_text(conf_text.replace("{dir}", str(conf_dir)))
    url = f"http://127.0.0.1:{port}"
    args = (["nice", "-n", str(nice)] if nice is not None else []) + [
        "nginx", "-c", str(conf), "-p", str(conf_dir), "-g", "daemon off;"]
    with process(args, workdir / f"{name}.log", url + "/health"):
        yield url


def nginx(upstream_port: int, port: int, workdir: Path, nice: int | None = None) -> Iterator[str]:
    """Plain reverse proxying (keep-alive upstream, one worker process) of the same traffic."""
    text = NGINX_CONF.replace("{dir}", "@DIR@").format(upstream=upstream_port, port=port).replace("@DIR@", "{dir}")
    return _nginx(text, port, workdir, f"nginx-proxy-{port}", nice)


def static_upstream(port: int, workdir: Path, body: str) -> Iterator[str]:
    """A TEI-shaped /embed that answers a fixed body in microseconds: isolates proxy overhead."""
    text = STATIC_CONF.replace("{dir}", "@DIR@").format(port=port, body=body).replace("@DIR@", "{dir}")
    return _nginx(text, port, workdir, f"nginx-static-{port}")


@dataclass
class Result:
    latencies_s: list[float]
    errors: int
    wall_s: float

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_s)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000

    def summary(self) -> dict[str, float]:
        return {"n": len(self.latencies_s), "errors": self.errors, "rps": round(self.rps, 1),
                "p50_ms": round(self.pct(0.5), 3), "p99_ms": round(self.pct(0.99), 3),
                "mean_ms": round(statistics.fmean(self.latencies_s) * 1000, 3)}


async def closed_loop(url: str, path: str, body: dict, headers: dict[str, str], requests: int,
                      concurrency: int, pool: ConnectionPool | None = None) -> Result:
    """`concurrency` clients, each sending its next request when the last one answered."""
    own_pool = pool is None
    pool = pool or ConnectionPool()
    payload = json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **headers}
    latencies: list[float] = []
    errors = 0
    left = requests

    async def client() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            start = time.perf_counter()
            response = await pool.request(url, "POST", path, payload, hdrs, 60)
            elapsed = time.perf_counter() - start
            if response.status == 200:
                latencies.append(elapsed)
            else:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    if own_pool:
        await pool.aclose()
    return Result(latencies, errors, wall)


def run(coro):
    return asyncio.run(coro)


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tei-gw-bench-"))
