"""Helpers shared by the dashboard tests: free ports, host facts, waiting on a running app."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from textual.pilot import Pilot

from tei_manager.core.facts import DockerFact, GpuFact, HostFacts

# A fixed instant for every frozen clock: 2027-01-15 08:00:00 UTC.
FROZEN_NOW = 1_800_000_000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A loopback URL nothing listens on: the gateway is "not running" there."""
    return f"http://127.0.0.1:{free_port()}"


def gpu_host() -> HostFacts:
    """Two GPUs as NVML would report them.  Injected: no GPU can exist on the test host."""
    return HostFacts(
        gpus=(
            GpuFact(index=0, name="NVIDIA L20", total_mib=46068, compute_capability=(8, 9),
                    free_mib=30068, utilization_pct=37),
            GpuFact(index=1, name="Tesla T4", total_mib=15360, compute_capability=(7, 5),
                    free_mib=15000, utilization_pct=0),
        ),
        docker=DockerFact(reachable=True, version="24.0.7", nvidia_runtime=True),
        cpu_count=16,
        memory_bytes=128 * 2**30,
    )


def cpu_host() -> HostFacts:
    """What probe_host reports on a host without an NVIDIA driver, frozen so the text is stable."""
    return HostFacts(
        gpus=(),
        docker=DockerFact(reachable=False, error="not probed"),
        nvml_error="NVML Shared Library Not Found - no NVIDIA driver on this host",
        cpu_count=2,
    )


async def wait_until(pilot: Pilot[Any], condition: Callable[[], bool], *, timeout_s: float,
                     what: str) -> None:
    """Let the app run until `condition` holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await pilot.pause(0.2)
    await pilot.pause()


async def settle(pilot: Pilot[Any]) -> None:
    """Wait for every worker the screen started, then for the messages they posted."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await asyncio.sleep(0)
    await pilot.pause()




@contextmanager
def metrics_server(render: Callable[[], bytes]) -> Iterator[str]:
    """A real HTTP server on loopback serving a `/metrics` page, as `tei-manager serve` does.

    Yields its base URL.  The page comes from the gateway's own `GatewayMetrics`, so the
    dashboard reads exactly the names and labels the gateway exports.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the stdlib's name
            found = self.path == "/metrics"
            body = render() if found else b""
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
