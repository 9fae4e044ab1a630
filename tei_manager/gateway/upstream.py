"""A small pooled HTTP/1.1 client for talking to TEI instances on a trusted network.

Why not httpx: the gateway's overhead budget is about a millisecond per request, and a general
client spends much of that on features an upstream call here never needs (redirects, cookies,
auth flows, HTTP/2 negotiation).  This client does exactly one thing: send a request with a
body on a kept-alive connection and read back status, headers and a body framed by
Content-Length or chunked encoding.

Contract:
* `request()` returns an `UpstreamResponse` for any HTTP status.
* `ConnectFailed`: no connection could be opened (nothing was sent; always safe to retry).
* `UpstreamBroken`: the connection dropped before a full response arrived (the request may
  have run; retry only idempotent calls — embed and rerank are).
* `UpstreamTimeout`: no full response within the timeout.
A kept-alive connection the server closed while idle is replaced transparently, once.
`abort(base_url)` cuts every request in flight to one upstream (it was taken out of rotation:
hung or gone); they end in `UpstreamBroken`, which the proxy retries on another replica.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_timeout = getattr(asyncio, "timeout", None)

# uvicorn closes idle keep-alive connections after 5 s; drop ours a bit earlier so a reused
# connection is rarely one the server is closing at that very moment.
IDLE_TTL_S = 4.0
MAX_HEADER_BYTES = 64 * 1024


class UpstreamError(Exception):
    pass


class ConnectFailed(UpstreamError):
    pass


class UpstreamBroken(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


@dataclass(eq=False)  # identity: connections live in sets
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)
    aborted: bool = False

    def usable(self) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < IDLE_TTL_S
        )

    def close(self) -> None:
        self.writer.close()


def _split(base_url: str) -> tuple[str, int, str]:
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return host, port, host_header


class ConnectionPool:
    def __init__(self, *, connect_timeout_s: float = 2.0, max_idle_per_host: int = 128) -> None:
        self._connect_timeout = connect_timeout_s
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._targets: dict[str, tuple[str, int, str]] = {}
        self._busy: dict[tuple[str, int], set[_Conn]] = {}

    def abort(self, base_url: str) -> int:
        """Cut the requests in flight to `base_url`; how many there were."""
        target = self._targets.get(base_url)
        if target is None:
            return 0
        busy = self._busy.pop(target[:2], set())
        for conn in busy:
            conn.aborted = True
            conn.close()
        return len(busy)

    async def request(
        self, base_url: str, method: str, path: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> UpstreamResponse:
        target = self._targets.get(base_url)
        if target is None:
            target = self._targets[base_url] = _split(base_url)
        try:
            if _timeout is not None:  # Python 3.11+: no extra task per request, unlike wait_for
                async with _timeout(timeout_s):
                    return await self._request(target, method, path, body, headers)
            return await asyncio.wait_for(self._request(target, method, path, body, headers), timeout_s)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{base_url}{path}: no answer within {timeout_s:g} s") from None

    async def _request(
        self, target: tuple[str, int, str], method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse:
        host, port, host_header = target
        head = [f"{method} {path} HTTP/1.1", f"host: {host_header}", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

        conn = self._take_idle((host, port))
        if conn is not None:
            try:
                return await self._exchange(conn, (host, port), payload)
            except _StaleConnection:
                if conn.aborted:
                    raise UpstreamBroken(f"{host}:{port}: cut off (taken out of rotation)") from None
                # the server had closed it while idle: nothing ran, try a fresh connection
        conn = await self._connect(host, port)
        try:
            return await self._exchange(conn, (host, port), payload)
        except _StaleConnection as exc:
            raise UpstreamBroken(f"{host}:{port}: connection closed before an answer") from exc

    def _take_idle(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self._connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"{host}:{port}: {str(exc) or type(exc).__name__}") from None
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, key: tuple[str, int], payload: bytes) -> UpstreamResponse:
        busy = self._busy.setdefault(key, set())
        busy.add(conn)
        try:
            return await self._exchange_on(conn, key, payload)
        finally:
            busy.discard(conn)

    async def _exchange_on(self, conn: _Conn, key: tuple[str, int], payload: bytes) -> UpstreamResponse:
        try:
            conn.writer.write(payload)
            try:
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _StaleConnection() from None
                raise
            except (ConnectionResetError, BrokenPipeError):
                raise _StaleConnection() from None
            status_line, _, raw_headers = head.partition(b"\r\n")
            status, keep_alive_default = _parse_status(status_line)
            headers = _parse_headers(raw_headers)
            if status in (204, 304) or 100 <= status < 200:
                body = b""
            else:
                body = await _read_body(conn.reader, headers)
        except _StaleConnection:
            conn.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            raise UpstreamBroken(f"{key[0]}:{key[1]}: {type(exc).__name__}: {exc}") from None
        except BaseException:
            conn.close()  # cancelled mid-response: the connection is in an unknown state
            raise
        connection = headers.get("connection", "").lower()
        if connection == "close" or (not keep_alive_default and connection != "keep-alive"):
            conn.close()
        else:
            self._give_back(key, conn)
        return UpstreamResponse(status, headers, body)

    def _give_back(self, key: tuple[str, int], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _StaleConnection(Exception):
    """The peer closed the connection before sending a single byte back."""


def _parse_status(line: bytes) -> tuple[int, bool]:
    version, _, rest = line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {line[:40]!r}")
    return int(rest[:3]), version != "HTTP/1.0"


def _parse_headers(raw: bytes) -> dict[str, str]:
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError("response headers too large")
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # trailers (usually none) end with an empty line
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return b"".join(chunks)
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    headers["connection"] = "close"  # body delimited by EOF: the connection cannot be reused
    return await reader.read()
