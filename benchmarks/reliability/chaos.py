"""Chaos under load through the gateway: kill -9 one of two replicas, then hang the other for 10 s.

    python benchmarks/reliability/chaos.py [--clients 8] [--inputs 8] [--max-requests 20000]

Two MiniLM fallback workers (the quickstart's tuning) run under the real process backend and
supervisor; the gateway runs in its own process, as `tei-manager serve` would.  Closed-loop
clients send /embed calls the whole time.  Phases:

1. warm-up (5 s);
2. `kill -9` of replica 1; the supervisor restarts it; recovery = kill until the gateway has it
   back in rotation (`tei_manager_gateway_instance_up` = 1);
3. `SIGSTOP` of replica 0 for 10 s, then `SIGCONT` (the supervisor may replace it first);
4. 5 s more, then stop.

Prints one JSON line: requests sent, failed, lost (no HTTP answer), 5xx, recovery time, the
gateway's peak RSS.  Loopback only; bounded by --max-requests and a 180 s wall-clock cap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Tally, deployment, instance_up, load, max_rss_mib

WALL_CAP_S = 180.0


async def scenario(args: argparse.Namespace) -> dict[str, object]:
    with deployment("chaos", 2, supervise=True) as dep:
        names = sorted(dep.pids())
        tally = Tally()
        stop = asyncio.Event()
        runner = asyncio.create_task(load(dep.gateway_url, args.clients, args.inputs, stop, tally, args.max_requests))
        started = time.monotonic()
        await asyncio.sleep(5)

        victim = names[1]
        os.kill(dep.pids()[victim], signal.SIGKILL)
        killed_at, killed_wall = time.monotonic(), time.time()
        recovery = None
        went_down = False
        while time.monotonic() - started < WALL_CAP_S / 2:
            up = await asyncio.to_thread(instance_up, dep.gateway_url)
            went_down = went_down or up.get(victim) == 0.0
            if went_down and up.get(victim) == 1.0:
                recovery = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.1)
        if not went_down:
            recovery = time.monotonic() - killed_at  # restarted before the gateway even noticed

        hung = names[0]
        pid = dep.pids()[hung]
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(10)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # the supervisor replaced it meanwhile
        await asyncio.sleep(5)
        stop.set()
        await asyncio.wait_for(runner, 90)
        rss = max_rss_mib(dep.gateway_pid)
        events = [(e.instance, e.kind, round(e.at - killed_wall, 1)) for e in dep.supervisor_events]
    return {
        "script": "chaos", "replicas": 2, "clients": args.clients, "inputs_per_request": args.inputs,
        "sent": tally.sent, "failed": tally.failed, "lost": tally.lost, "status_5xx": tally.server_errors,
        "statuses": dict(tally.statuses), "kill9_back_in_rotation_s": None if recovery is None else round(recovery, 1),
        "gateway_max_rss_mib": round(rss, 1), "supervisor_events_s_after_kill": events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=20000)
    print(json.dumps(asyncio.run(scenario(parser.parse_args()))))


if __name__ == "__main__":
    main()
