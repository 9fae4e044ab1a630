"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its next
request as soon as the previous answer arrives. Hand-written on asyncio streams so that it costs
far less CPU than the servers it measures (they share the same cores)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    inputs: int = 0
    errors: int = 0
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def throughput(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


async def _one_connection(
    host: str, port: int, path: str, make_body: Callable[[int], tuple[bytes, int]], stop_at: float,
    measure_from: float, result: Result, seed: int,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = seed
    try:
        while time.perf_counter() < stop_at:
            body, n_inputs = make_body(i)
            i += 1
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            began = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readline()).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            ended = time.perf_counter()
            if began < measure_from:
                continue  # warm-up traffic
            if status_line.split()[1:2] != [b"200"]:
                result.errors += 1
                continue
            result.latencies.append(ended - began)
            result.inputs += n_inputs
    finally:
        writer.close()


async def run_load(
    host: str, port: int, path: str, make_body: Callable[[int], tuple[bytes, int]], *, concurrency: int,
    seconds: float, warmup: float = 2.0,
) -> Result:
    result = Result()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    await asyncio.gather(
        *(
            _one_connection(host, port, path, make_body, stop_at, measure_from, result, seed=c * 7919)
            for c in range(concurrency)
        )
    )
    result.seconds = time.perf_counter() - measure_from
    return result


def openai_body(texts: list[str], model: str, batch: int) -> Callable[[int], tuple[bytes, int]]:
    """OpenAI-style embedding requests (served by both runtimes) cycling through ``texts``."""

    def make(i: int) -> tuple[bytes, int]:
        start = (i * batch) % len(texts)
        chunk = [texts[(start + k) % len(texts)] for k in range(batch)]
        return json.dumps({"model": model, "input": chunk}).encode(), batch

    return make
