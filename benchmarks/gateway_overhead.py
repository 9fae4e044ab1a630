"""What the gateway adds on top of calling an upstream directly, next to nginx doing plain proxying.

Two upstreams, each measured three ways (direct, through `tei-manager serve`, through nginx):

* `worker`: a real fallback worker (all-MiniLM-L6-v2 on CPU), POST /embed with one short input.
  The honest end-to-end picture, but the model's own latency varies by milliseconds.
* `static`: nginx answering /embed with a fixed TEI-shaped body in microseconds.  Nothing but
  the proxy's own cost is left, so the added p50 is measured to a few microseconds.

All processes listen on 127.0.0.1.  The gateway and nginx run as their own processes (nginx with
one worker process and keep-alive upstream connections).  Targets are interleaved in small blocks
so drift in the machine's load hits them alike.

    python benchmarks/gateway_overhead.py [--blocks 20] [--block 25] [--concurrency 1 4]

Goals: gateway p50 added <= 1 ms and throughput >= 0.9x of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from contextlib import ExitStack

from gateway_common import (  # also puts the repository and tests/ on sys.path
    Result,
    closed_loop,
    free_port,
    gateway,
    minilm_path,
    nginx,
    static_upstream,
    tmpdir,
    worker,
    write_profile,
)

from tei_manager.gateway.upstream import ConnectionPool

BODY = {"inputs": "What is the capital of France?"}
KEY = "bench-key"
STATIC_ANSWER = json.dumps([[round(0.01 * i, 2) for i in range(384)]])


def merge(results: list[Result]) -> Result:
    return Result([x for r in results for x in r.latencies_s], sum(r.errors for r in results),
                  sum(r.wall_s for r in results))


async def measure(targets: dict[str, tuple[str, dict[str, str]]], blocks: int, block: int,
                  concurrency: int) -> dict[str, Result]:
    pools = {name: ConnectionPool() for name in targets}
    for name, (url, headers) in targets.items():  # warm up connections and code paths
        await closed_loop(url, "/embed", BODY, headers, 50, concurrency, pools[name])
    parts: dict[str, list[Result]] = {name: [] for name in targets}
    for _ in range(blocks):
        for name, (url, headers) in targets.items():
            parts[name].append(await closed_loop(url, "/embed", BODY, headers, block, concurrency, pools[name]))
    for pool in pools.values():
        await pool.aclose()
    return {name: merge(rs) for name, rs in parts.items()}


def compare(results: dict[str, Result]) -> dict[str, object]:
    direct = results["direct"]
    row: dict[str, object] = {name: r.summary() for name, r in results.items()}
    for name in results:
        if name != "direct":
            row[f"{name}_p50_added_ms"] = round(results[name].pct(0.5) - direct.pct(0.5), 3)
            row[f"{name}_throughput_ratio"] = round(results[name].rps / direct.rps, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=20, help="interleaved blocks per target")
    parser.add_argument("--block", type=int, default=25, help="requests per block")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--upstream", choices=["worker", "static", "both"], default="both")
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="torch threads of the worker (OMP_NUM_THREADS); default: torch's choice")
    parser.add_argument("--proxy-nice", type=int, default=None,
                        help="run the gateway and nginx at this niceness (e.g. -10 on a busy host)")
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is needed (apt-get install nginx)")

    work = tmpdir()
    model = minilm_path()
    report: dict[str, object] = {}
    modes = ["static", "worker"] if args.upstream == "both" else [args.upstream]
    for mode in modes:
        uport, gport, nport = free_port(), free_port(), free_port()
        profile = work / f"bench-{mode}.yaml"
        write_profile(profile, model, uport, gport, {"bench": {"api_keys": [{"env": "BENCH_KEY"}]}})
        with ExitStack() as stack:
            if mode == "worker":
                direct = stack.enter_context(worker(model, uport, work, threads=args.worker_threads))
            else:
                direct = stack.enter_context(static_upstream(uport, work, STATIC_ANSWER))
            gw = stack.enter_context(gateway(profile, gport, work, {"BENCH_KEY": KEY}, nice=args.proxy_nice))
            proxy = stack.enter_context(nginx(uport, nport, work, nice=args.proxy_nice))
            targets = {"direct": (direct, {}), "gateway": (gw, {"authorization": f"Bearer {KEY}"}),
                       "nginx": (proxy, {})}
            for concurrency in args.concurrency:
                results = asyncio.run(measure(targets, args.blocks, args.block, concurrency))
                report[f"{mode} upstream, concurrency {concurrency}"] = compare(results)
    report["settings"] = vars(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
