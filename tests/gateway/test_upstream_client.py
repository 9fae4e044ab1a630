"""The gateway's pooled HTTP/1.1 client against real loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tei_manager.gateway.upstream import (
    ConnectFailed,
    ConnectionPool,
    UpstreamBroken,
    UpstreamTimeout,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0

    async def __aenter__(self) -> str:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def keep_alive(body: bytes, *, requests: int = 100, extra: bytes = b"") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(requests):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-compute-tokens: 7\r\n"
                         + extra + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()

    return handle


async def test_keep_alive_connections_are_reused() -> None:
    server = Server(keep_alive(b"[[0.5]]"))
    async with server as url:
        pool = ConnectionPool()
        for _ in range(5):
            r = await pool.request(url, "POST", "/embed", b'{"inputs":"x"}', {"content-type": "application/json"}, 5)
            assert (r.status, r.body, r.headers["x-compute-tokens"]) == (200, b"[[0.5]]", "7")
        assert server.connections == 1
        await pool.aclose()


async def test_chunked_bodies_are_reassembled() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n[[1,\r\n3\r\n2]]\r\n0\r\n\r\n")
        await writer.drain()

    async with Server(handle) as url:
        r = await ConnectionPool().request(url, "POST", "/embed", b"{}", {}, 5)
        assert r.body == b"[[1,2]]"


async def test_an_idle_connection_the_server_closed_is_replaced_transparently() -> None:
    server = Server(keep_alive(b"ok", requests=1))  # answers once, then closes
    async with server as url:
        pool = ConnectionPool()
        assert (await pool.request(url, "POST", "/embed", b"{}", {}, 5)).body == b"ok"
        await asyncio.sleep(0.05)
        assert (await pool.request(url, "POST", "/embed", b"{}", {}, 5)).body == b"ok"
        assert server.connections == 2


async def test_refused_connection_is_connect_failed() -> None:
    async with Server(keep_alive(b"")) as url:
        pass  # closed again: nothing listens on that port now
    with pytest.raises(ConnectFailed):
        await ConnectionPool().request(url, "POST", "/embed", b"{}", {}, 5)


async def test_connection_dropped_mid_answer_is_broken() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n[[0.1,")
        await writer.drain()

    async with Server(handle) as url:
        with pytest.raises(UpstreamBroken):
            await ConnectionPool().request(url, "POST", "/embed", b"{}", {}, 5)


async def test_slow_answer_times_out() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with Server(handle) as url:
        with pytest.raises(UpstreamTimeout):
            await ConnectionPool().request(url, "POST", "/embed", b"{}", {}, 0.2)


async def test_connection_close_and_bodyless_statuses() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()

    server = Server(handle)
    async with server as url:
        pool = ConnectionPool()
        for _ in range(2):
            r = await pool.request(url, "GET", "/health", b"", {}, 5)
            assert (r.status, r.body) == (204, b"")
        assert server.connections == 2  # `connection: close` is honoured
