"""A light closed-loop HTTP/1.1 load generator on asyncio streams.

``concurrency`` keep-alive connections each send the next request as soon as the previous answer
arrives. Written on raw streams rather than an HTTP client so that it costs far less CPU than the
instance it measures, which shares the host's cores on CPU trials. Every request has a deadline,
so a hung instance ends a step on time instead of stalling the tune.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: A request body maker: request number -> (JSON body, inputs it carries).
BodyMaker = Callable[[int], tuple[bytes, int]]


@dataclass
class StepResult:
    """What one concurrency level measured (only requests sent after the warm-up count)."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    inputs: int = 0
    rejected: int = 0  # 429: admission said no
    client_errors: int = 0  # other 4xx: the settings refuse this workload (e.g. batch too large)
    server_errors: int = 0  # 5xx
    transport_errors: int = 0  # refused, reset, timed out
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return self.rejected + self.client_errors + self.server_errors + self.transport_errors

    @property
    def error_rate(self) -> float:
        total = self.requests + self.errors
        return self.errors / total if total else 0.0

    def percentile_ms(self, p: float) -> float | None:
        """Nearest-rank percentile (no interpolation: with few samples p99 is the slowest one)."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, -(-len(ordered) * p // 100) - 1))
        return ordered[int(rank)] * 1000

    @property
    def throughput(self) -> float:
        """Inputs per second (texts embedded, or documents scored)."""
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    close = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and "close" in value.lower():
            close = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(length)
    if close:
        raise _ServerClosed(status)
    return status


class _ServerClosed(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _record(result: StepResult, status: int, began: float, inputs: int) -> None:
    if 200 <= status < 300:
        result.latencies.append(time.perf_counter() - began)
        result.inputs += inputs
    elif status == 429:
        result.rejected += 1
    elif status < 500:
        result.client_errors += 1
    else:
        result.server_errors += 1


async def _connection(host: str, port: int, path: str, make_body: BodyMaker, first: int, stride: int,
                      stop_at: float, measure_from: float, timeout: float, result: StepResult,
                      extra_head: str = "") -> None:
    i = first
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while time.perf_counter() < stop_at:
        body, n_inputs = make_body(i)
        i += stride
        began = time.perf_counter()
        measured = began >= measure_from
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            reader, writer = conn
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"{extra_head}Content-Length: {len(body)}\r\n\r\n").encode()
            writer.write(head + body)
            await asyncio.wait_for(writer.drain(), timeout)
            status = await asyncio.wait_for(_read_response(reader), timeout)
        except _ServerClosed as closed:
            status = closed.status
            _close(conn)
            conn = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            _close(conn)
            conn = None
            if measured:
                result.transport_errors += 1
            await asyncio.sleep(0.05)  # a refused connection must not spin
            continue
        if measured:
            _record(result, status, began, n_inputs)
    _close(conn)


def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    """Close the connection, if any."""
    if conn is not None:
        conn[1].close()


async def run_step(base_url: str, path: str, make_body: BodyMaker, *, concurrency: int, seconds: float,
                   warmup: float = 0.5, timeout: float = 30.0, offset: int = 0,
                   headers: Mapping[str, str] | None = None) -> StepResult:
    """Hold ``concurrency`` requests in flight for ``warmup + seconds``; measure the last ``seconds``.

    ``headers`` go on every request (an instance's internal key: ``authorization: Bearer ...``)."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    result = StepResult(concurrency=concurrency)
    extra_head = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    await asyncio.gather(*(
        _connection(host, port, path, make_body, offset + c, concurrency, stop_at, measure_from, timeout, result,
                    extra_head)
        for c in range(concurrency)
    ))
    # Requests still running at stop_at finish late; the window is measured from warm-up end to now.
    result.seconds = time.perf_counter() - measure_from
    return result
