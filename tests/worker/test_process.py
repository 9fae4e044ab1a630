"""The real `tei-fallback-worker` process: flags, port opening only once warm, HTTP, SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command() -> list[str]:
    # The console script when the package is installed; the module otherwise (same entry point).
    script = shutil.which("tei-fallback-worker")
    return [script] if script else [sys.executable, "-m", "fallback_worker"]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_worker_process_serves_once_warm_and_stops_on_sigterm(tiny_reranker_dir: Path) -> None:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MAX_CLIENT_BATCH_SIZE": "8", "HOSTNAME": "not-an-ip"}
    cmd = [
        *_command(), "--model-id", str(tiny_reranker_dir), "--hostname", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-batch-tokens", "1024", "--max-batch-requests", "4", "--auto-truncate",
        "--header-read-timeout", "1",
        # TEI flags this runtime cannot honour must not stop it:
        "--otlp-endpoint", "http://127.0.0.1:4317", "--prometheus-port", "9999", "--disable-spans",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not _port_open(port):
            assert proc.poll() is None, "worker exited early:\n" + "".join(lines)
            assert time.monotonic() < deadline, "port never opened:\n" + "".join(lines)
            time.sleep(0.05)
        # The first moment the port accepts, the worker is ready: /health is 200, not refused or 503.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        # "warmed up" was logged before the socket was bound; give the pipe reader a moment to catch up.
        wait_for = time.monotonic() + 10
        while not any("Ready" in line for line in lines) and time.monotonic() < wait_for:
            time.sleep(0.05)
        log = "".join(lines)
        assert log.index("warmed up") < log.index("Ready")
        assert "--otlp-endpoint is accepted but ignored" in log

        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()
        assert info["max_client_batch_size"] == 8, "env vars are read like TEI's"
        assert info["max_batch_tokens"] == 1024 and info["auto_truncate"] is True
        assert info["max_batch_requests"] == 4
        r = httpx.post(f"http://127.0.0.1:{port}/rerank", json={"query": "q", "texts": ["a b", "c"]}, timeout=30)
        assert r.status_code == 200 and len(r.json()) == 2
        assert "x-inference-time" in r.headers
        # The process serves with the read deadlines: a connection that never sends headers is cut.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            assert silent.recv(100).startswith(b"HTTP/1.1 408")
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()
        assert info["model_id"] == tiny_reranker_dir.name, "no host path in /info"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not _port_open(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_startup_failure_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.run(
        [*_command(), "--model-id", str(tmp_path / "missing-model"), "--hostname", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1
    assert "missing-model" in proc.stderr and "Traceback" not in proc.stderr
