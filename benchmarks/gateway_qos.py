"""Priority lanes under load: does a high-priority tenant keep its latency while a low-priority
tenant saturates the same worker?

One fallback worker (all-MiniLM-L6-v2 on CPU) behind `tei-manager serve` on 127.0.0.1, tenants
`interactive` (priority high) and `bulk` (priority low) sharing the deployment.  Three phases,
each with the same sequential stream of high-priority requests:

1. unloaded: the high-priority stream alone, through the gateway;
2. loaded, gateway: plus `--load` concurrent low-priority clients, through the gateway;
3. loaded, direct: the same traffic sent straight to the worker (its FIFO queue, no lanes) —
   what the high-priority tenant would see without the gateway.

    python benchmarks/gateway_qos.py [--requests 40] [--rounds 5] [--load 8] [--instance-concurrency 1]

Goal: phase 2's p99 within 2x of phase 1's.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from gateway_common import (  # also puts the repository and tests/ on sys.path
    Result,
    closed_loop,
    free_port,
    gateway,
    minilm_path,
    tmpdir,
    worker,
    write_profile,
)

from tei_manager.gateway.upstream import ConnectionPool

QUERY = {"inputs": "how do I reset my password?"}
# Bulk indexing: same size of request, many of them at once.
BULK = {"inputs": "chapter three of the handbook explains how passwords are reset by the help desk"}


async def loaded(url: str, high_headers: dict[str, str], low_headers: dict[str, str], requests: int,
                 load: int) -> tuple[Result, Result]:
    """The high-priority stream while `load` low-priority clients keep the worker busy."""
    stop = asyncio.Event()
    low_pool = ConnectionPool()
    low_latencies: list[float] = []

    async def low_client() -> None:
        while not stop.is_set():
            r = await closed_loop(url, "/embed", BULK, low_headers, 1, 1, low_pool)
            low_latencies.extend(r.latencies_s)

    lows = [asyncio.create_task(low_client()) for _ in range(load)]
    await asyncio.sleep(1.0)  # let the backlog build
    high = await closed_loop(url, "/embed", QUERY, high_headers, requests, 1)
    stop.set()
    await asyncio.gather(*lows)
    await low_pool.aclose()
    return high, Result(low_latencies, 0, high.wall_s)


def merge(results: list[Result]) -> Result:
    return Result([x for r in results for x in r.latencies_s], sum(r.errors for r in results),
                  sum(r.wall_s for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="high-priority requests per phase and round")
    parser.add_argument("--rounds", type=int, default=5, help="the three phases are repeated, interleaved")
    parser.add_argument("--load", type=int, default=8, help="concurrent low-priority clients")
    parser.add_argument("--instance-concurrency", type=int, default=1,
                        help="requests the gateway lets the worker run at once")
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="torch threads of the worker (OMP_NUM_THREADS); default: torch's choice")
    args = parser.parse_args()

    work = tmpdir()
    model = minilm_path()
    wport, gport = free_port(), free_port()
    profile = work / "qos.yaml"
    tenants = {
        "interactive": {"api_keys": [{"env": "HIGH_KEY"}], "priority": "high", "quota": {"max_wait_ms": 60000}},
        "bulk": {"api_keys": [{"env": "LOW_KEY"}], "priority": "low", "quota": {"max_wait_ms": 60000}},
    }
    write_profile(profile, model, wport, gport, tenants)
    high_h, low_h = {"authorization": "Bearer high"}, {"authorization": "Bearer low"}
    report: dict[str, object] = {}
    with worker(model, wport, work, threads=args.worker_threads) as direct, gateway(
        profile, gport, work, {"HIGH_KEY": "high", "LOW_KEY": "low"},
        "--instance-concurrency", str(args.instance_concurrency),
    ) as gw:
        asyncio.run(closed_loop(gw, "/embed", QUERY, high_h, 50, 2))  # warm-up
        phases: dict[str, list[Result]] = {"unloaded": [], "gateway": [], "direct": [], "low_gw": [], "low_direct": []}
        for _ in range(args.rounds):  # interleaved, so load from elsewhere on the host hits all phases alike
            phases["unloaded"].append(asyncio.run(closed_loop(gw, "/embed", QUERY, high_h, args.requests, 1)))
            high, low = asyncio.run(loaded(gw, high_h, low_h, args.requests, args.load))
            phases["gateway"].append(high)
            phases["low_gw"].append(low)
            high, low = asyncio.run(loaded(direct, {}, {}, args.requests, args.load))
            phases["direct"].append(high)
            phases["low_direct"].append(low)
        unloaded, via_gateway, via_direct, low_gw, low_direct = (
            merge(phases[k]) for k in ("unloaded", "gateway", "direct", "low_gw", "low_direct"))
    report["high, unloaded (gateway)"] = unloaded.summary()
    report["high, low-priority load (gateway)"] = via_gateway.summary()
    report["high, same load straight to the worker (FIFO)"] = via_direct.summary()
    report["low-priority throughput during phase 2 / phase 3 (req/s)"] = [round(low_gw.rps, 1),
                                                                          round(low_direct.rps, 1)]
    report["p99 ratio loaded/unloaded, gateway"] = round(via_gateway.pct(0.99) / unloaded.pct(0.99), 2)
    report["p99 ratio loaded/unloaded, direct"] = round(via_direct.pct(0.99) / unloaded.pct(0.99), 2)
    report["settings"] = vars(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
