"""Each replica's input permits, read from the flags the Plan gives its runtime.

TEI and the fallback worker admit `--max-concurrent-requests` *inputs* at once (one permit per
input, 429 beyond); the gateway admits in the same unit so it never sends what a replica would
refuse (see qos.py).  Kept apart from config.py so the route table can be built without it.
"""

from __future__ import annotations

import dataclasses

from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.gateway.config import GatewayConfig
from tei_manager.gateway.routing import RouteTable

TEI_DEFAULT_MAX_CONCURRENT_REQUESTS = 512  # TEI's own default for the flag


def input_permits(instance: InstancePlan) -> int:
    args = list(instance.args)
    if "--max-concurrent-requests" in args:
        at = args.index("--max-concurrent-requests")
        if at + 1 < len(args) and args[at + 1].isdigit():
            return max(1, int(args[at + 1]))
    return TEI_DEFAULT_MAX_CONCURRENT_REQUESTS


def with_input_permits(config: GatewayConfig, plan: Plan) -> GatewayConfig:
    """`config` with every route's `inputs_per_replica` set (the smallest of its replicas)."""
    permits: dict[str, int] = {}
    for inst in plan.instances:
        permits[inst.deployment] = min(permits.get(inst.deployment, 1 << 30), input_permits(inst))
    routes = [dataclasses.replace(r, inputs_per_replica=permits.get(r.deployment)) for r in config.table.routes]
    return dataclasses.replace(config, table=RouteTable(routes))
