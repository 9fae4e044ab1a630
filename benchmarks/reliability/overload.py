"""Ten times the capacity through the gateway: bounded refusals, no errors, bounded memory.

    python benchmarks/reliability/overload.py [--factor 10] [--inputs 16] [--seconds 20]

One MiniLM fallback worker with the quickstart's tuning (64 input permits, 16 inputs per request)
behind the gateway in its own process.  `factor x 64 / inputs` closed-loop clients send /embed
calls of `inputs` texts for `--seconds`: ten times what the instance admits at once.

What must hold: every answer is 200 or a 429 from the gateway with `Retry-After` (waits beyond the
tenant's `max_wait_ms`), none is a 5xx, none is lost, and the gateway's memory stays bounded.
Prints one JSON line.  Loopback only; bounded by --seconds (at most 120) and --max-requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import KEY, Tally, deployment, load, max_rss_mib

PERMITS = 64  # the worker's max_concurrent_requests in common.profile_data


async def scenario(args: argparse.Namespace) -> dict[str, object]:
    clients = max(1, args.factor * PERMITS // args.inputs)
    with deployment("overload", 1, supervise=False) as dep:
        tally = Tally()
        stop = asyncio.Event()
        runner = asyncio.create_task(load(dep.gateway_url, clients, args.inputs, stop, tally, args.max_requests))
        await asyncio.sleep(min(args.seconds, 120))
        stop.set()
        await asyncio.wait_for(runner, 90)
        # A refusal must say when to come back.
        async with httpx.AsyncClient(timeout=30) as http:
            probe = await http.post(dep.gateway_url + "/embed", json={"inputs": "after"},
                                    headers={"Authorization": f"Bearer {KEY}"})
            metrics = (await http.get(dep.gateway_url + "/metrics")).text
        rejected = {line.split('reason="', 1)[1].split('"', 1)[0]: float(line.split()[-1])
                    for line in metrics.splitlines()
                    if line.startswith("tei_manager_gateway_rejections_total{")}
        rss = max_rss_mib(dep.gateway_pid)
    return {
        "script": "overload", "factor": args.factor, "clients": clients, "inputs_per_request": args.inputs,
        "seconds": args.seconds, "sent": tally.sent, "ok": tally.statuses.get(200, 0),
        "status_429": tally.statuses.get(429, 0), "status_5xx": tally.server_errors, "lost": tally.lost,
        "other": {s: n for s, n in tally.statuses.items() if s not in (200, 429) and s < 500},
        "gateway_rejections_by_reason": rejected, "after_overload_status": probe.status_code,
        "gateway_max_rss_mib": round(rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-requests", type=int, default=50000)
    print(json.dumps(asyncio.run(scenario(parser.parse_args()))))


if __name__ == "__main__":
    main()
