"""The proxy's failover against real loopback servers that misbehave on purpose: a replica that
accepts and never answers (hung), one whose requests are cut when it leaves the rotation, and
one that is out of permits (429)."""

from __future__ import annotations

import asyncio

from test_upstream_client import Server, keep_alive, read_request

from tei_manager.gateway.proxy import Proxy
from tei_manager.gateway.routing import Balancer, Route
from tei_manager.gateway.upstream import ConnectionPool


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(3600)


async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    body = b'{"error":"Model is overloaded","error_type":"Overloaded"}'
    writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()


def route(*urls: str) -> Route:
    return Route(deployment="d", tenant="t", shared=False, model_key="m", hub_id="m", served_model_name="m",
                 tasks=frozenset({"embed"}), replicas=urls)


def proxy(balancer: Balancer, pool: ConnectionPool, health: list[tuple[str, bool]]) -> Proxy:
    return Proxy(pool, balancer, on_health=lambda url, ok: health.append((url, ok)))


async def test_a_hung_replica_is_left_after_the_per_try_deadline() -> None:
    async with Server(hang) as stuck, Server(keep_alive(b"[[1.0]]")) as good:
        balancer, pool, health = Balancer(), ConnectionPool(), []
        balancer.state(good).in_flight = 1  # the hung one is picked first
        forwarded = await proxy(balancer, pool, health).forward(route(stuck, good), "/embed", b"{}", timeout_s=2.0)
        await pool.aclose()
    assert forwarded.response.status == 200 and forwarded.url == good and forwarded.retried


async def test_requests_cut_when_a_replica_leaves_the_rotation_are_retried() -> None:
    async with Server(hang) as stuck, Server(keep_alive(b"[[1.0]]")) as good:
        balancer, pool, health = Balancer(), ConnectionPool(), []
        balancer.state(good).in_flight = 1
        call = asyncio.ensure_future(
            proxy(balancer, pool, health).forward(route(stuck, good), "/embed", b"{}", timeout_s=60.0))
        await asyncio.sleep(0.3)
        balancer.mark(stuck, False)
        assert pool.abort(stuck) == 1  # what the gateway does when the prober takes it out
        forwarded = await asyncio.wait_for(call, 5)
        await pool.aclose()
    assert forwarded.url == good and forwarded.response.status == 200


async def test_a_replica_out_of_permits_is_tried_once_elsewhere() -> None:
    async with Server(busy) as full, Server(keep_alive(b"[[1.0]]")) as good:
        balancer, pool, health = Balancer(), ConnectionPool(), []
        balancer.state(good).in_flight = 1
        forwarded = await proxy(balancer, pool, health).forward(route(full, good), "/embed", b"{}", timeout_s=5.0)
        await pool.aclose()
    assert forwarded.url == good and health == []  # busy is not unhealthy
