"""Slow and vanishing clients against the fallback worker (and optionally a gateway), on loopback.

Three attacks, each bounded in time, while a well-behaved client keeps calling /embed:

1. slowloris: --connections sockets send a request line, then one header line every 2 s, never
   the blank line that ends the headers;
2. slow body: --connections sockets send complete headers announcing a 1000-byte JSON body and
   then trickle one byte every 2 s;
3. disconnects: --connections clients send a full /embed request and close before the answer,
   and as many more close halfway through the body.

Reports, per attack: how many connections the server closed and how long it held the last one
(bounded by the worker's --header-read-timeout / --body-read-timeout, 10 s and 30 s by default),
the well-behaved client's requests and failures during the attack, and afterwards the worker's
5xx count (te_request_failure), tracebacks and error lines in its log, and its peak RSS.

    python benchmarks/reliability/slow_clients.py                      # starts a MiniLM worker
    python benchmarks/reliability/slow_clients.py --gateway-url http://127.0.0.1:8000 --gateway-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from fuzz import (  # the same worker setup
    add_target_arguments,
    open_targets,
    peak_rss_mb,
    scan_log,
    stop,
)

TRICKLE_S = 2.0


async def hold(host: str, port: int, first: bytes, drip: bytes, limit: float) -> float | None:
    """Open a connection, send ``first``, then ``drip`` every TRICKLE_S; seconds until the server closed it."""
    began = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0.0
    try:
        writer.write(first)
        await writer.drain()
        while time.monotonic() - began < limit:
            try:
                data = await asyncio.wait_for(reader.read(4096), TRICKLE_S)
            except TimeoutError:
                writer.write(drip)
                try:
                    await writer.drain()
                except OSError:
                    return time.monotonic() - began
                continue
            except OSError:
                return time.monotonic() - began
            if not data or reader.at_eof():
                return time.monotonic() - began
        return None  # still open at the end of the attack
    finally:
        writer.close()


async def bystander(url: str, headers: dict[str, str], stop: asyncio.Event) -> tuple[int, int, list[float]]:
    """A well-behaved client: one /embed at a time until ``stop``; (requests, failures, latencies)."""
    sent, failed, latencies = 0, 0, []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        while not stop.is_set():
            began = time.monotonic()
            try:
                r = await client.post("/embed", json={"inputs": "a well-behaved client"})
                failed += r.status_code != 200
            except httpx.HTTPError:
                failed += 1
            sent += 1
            latencies.append(time.monotonic() - began)
            await asyncio.sleep(0.2)
    return sent, failed, latencies


async def disconnect(host: str, port: int, request: bytes, cut: int | None) -> None:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    writer.write(request if cut is None else request[:cut])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()  # RST, not a polite FIN


async def attack(name: str, url: str, auth: dict[str, str], n: int, limit: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    auth_line = "".join(f"{k}: {v}\r\n" for k, v in auth.items()).encode()
    stop = asyncio.Event()
    watcher = asyncio.create_task(bystander(url, auth, stop))
    began = time.monotonic()
    held: list[float | None] = []
    if name == "slowloris":
        first = b"POST /embed HTTP/1.1\r\nHost: x\r\n" + auth_line
        held = await asyncio.gather(*(hold(host, port, first, b"X-Slow: 1\r\n", limit) for _ in range(n)))
    elif name == "slow body":
        first = (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
                 + auth_line + b"\r\n{\"inputs\": \"")
        held = await asyncio.gather(*(hold(host, port, first, b"a", limit) for _ in range(n)))
    else:
        body = json.dumps({"inputs": "a text that is embedded for nobody"}).encode()
        request = (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth_line
                   + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await asyncio.gather(*(disconnect(host, port, request, None) for _ in range(n)),
                             *(disconnect(host, port, request, len(request) - len(body) // 2) for _ in range(n)))
        await asyncio.sleep(2)
    stop.set()
    sent, failed, latencies = await watcher
    closed = [h for h in held if h is not None]
    return {
        "attack": name,
        "connections": n if held else 2 * n,
        "closed_by_server": len(closed) if held else None,
        "still_open_at_end": sum(1 for h in held if h is None) if held else None,
        "longest_held_s": round(max(closed), 1) if closed else None,
        "median_held_s": round(statistics.median(closed), 1) if closed else None,
        "seconds": round(time.monotonic() - began, 1),
        "bystander_requests": sent,
        "bystander_failures": failed,
        "bystander_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "bystander_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }


def failures_5xx(url: str, headers: dict[str, str]) -> dict[str, float]:
    """te_request_failure by label, from the worker's /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", headers=headers, timeout=30).text.splitlines():
        if line.startswith("te_request_failure{"):
            label = line.split('err="')[1].split('"')[0]
            out[label] = float(line.rsplit(" ", 1)[1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(ap, "attack")
    ap.add_argument("--connections", type=int, default=250)
    ap.add_argument("--limit", type=float, default=60.0, help="seconds each attack may last at most")
    args = ap.parse_args()

    log_path = Path(tempfile.mkdtemp(prefix="slow-clients-")) / "worker.log"
    proc, worker_url, targets = open_targets(args, log_path)

    results: list[dict[str, Any]] = []
    try:
        for name, url, auth in targets:
            for kind in ("slowloris", "slow body", "disconnects"):
                print(f"{name}: {kind} x {args.connections}", flush=True)
                row = asyncio.run(attack(kind, url, auth, args.connections, args.limit))
                row["target"] = name
                results.append(row)
                print("  ", json.dumps(row), flush=True)
        after: dict[str, Any] = {
            "worker_failures": failures_5xx(worker_url, {}),
            "worker_healthy_after": httpx.get(worker_url + "/health", timeout=30).status_code == 200,
            "worker_peak_rss_mb": round(peak_rss_mb(proc.pid) or 0, 1) if proc else None,
        }
    finally:
        if proc is not None:
            stop(proc)
    if proc is not None:
        tracebacks, errors = scan_log(log_path)
        after.update(tracebacks_in_worker_log=tracebacks, error_lines_in_worker_log=errors, worker_log=str(log_path))
    if args.gateway_log:
        after["tracebacks_in_gateway_log"], after["error_lines_in_gateway_log"] = scan_log(args.gateway_log)
    print(json.dumps({"attacks": results, **after}, indent=2))
    open_at_end = sum(r["still_open_at_end"] or 0 for r in results)
    bad = (open_at_end or after["worker_failures"].get("inference", 0) or after.get("tracebacks_in_worker_log")
           or after.get("tracebacks_in_gateway_log"))
    return 1 if bad or not after["worker_healthy_after"] else 0


if __name__ == "__main__":
    sys.exit(main())
