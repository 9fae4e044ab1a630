"""The HTTP server around the app: uvicorn, plus read deadlines that uvicorn does not have.

uvicorn times out idle keep-alive connections, but not a request that arrives slowly: any byte
cancels its keep-alive timer, so a client that sends one header byte every few seconds (slowloris)
holds its connection, a file descriptor and a parser for as long as it likes; 250 such clients
held a worker for 30 s and more. hyper (TEI's server) bounds the header read instead.

`read_deadline_protocol` wraps uvicorn's own HTTP protocol class (httptools when installed, else
h11, as uvicorn's "auto" picks) with two deadlines per request:

- headers: from the connection's first moment (or the first byte of a later keep-alive request)
  until the request line and headers are complete; past it the server answers 408 and closes;
- body: from the end of the headers until the last body byte; past it the connection is closed
  (the handler then sees a client disconnect, which is not logged as an error).

Both are checked by one timer per connection on the event loop: no thread and no polling.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn

log = logging.getLogger("fallback_worker.http")

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain\r\ncontent-length: 28\r\nconnection: close\r\n\r\n"
    b"request headers arrived late"
)


def _base_protocol() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def read_deadline_protocol(header_timeout: float, body_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with header and body read deadlines (seconds)."""
    base: Any = _base_protocol()

    class ReadDeadlineProtocol(base):  # type: ignore[misc]
        _deadline: asyncio.TimerHandle | None = None
        _phase = "headers"

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm("headers", header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self._between_requests():
                self._arm("headers", header_timeout)  # the first bytes of a keep-alive request
            super().data_received(data)
            self._follow()

        # -- state ---------------------------------------------------------------------------
        def _between_requests(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _follow(self) -> None:
            """Move the deadline along with the request: headers -> body -> done."""
            if self._between_requests():
                return  # still reading a request line and headers
            if self.cycle.more_body:
                if self._phase != "body":
                    self._arm("body", body_timeout)
            else:
                self._disarm()  # the whole request is in; the app's time is not ours to bound

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self._phase = phase
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._phase = "idle"

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            log.info("closing a connection from %s: request %s not received in time", self._peer(), self._phase)
            if self._phase == "headers":
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

        def _peer(self) -> str:
            client = getattr(self, "client", None)
            return f"{client[0]}:{client[1]}" if client else "a client"

    return ReadDeadlineProtocol


def server_config(
    app: Any,
    *,
    header_timeout: float = HEADER_TIMEOUT_S,
    body_timeout: float = BODY_TIMEOUT_S,
    **kwargs: Any,
) -> uvicorn.Config:
    """A uvicorn.Config serving ``app`` with the read deadlines; other arguments go to uvicorn."""
    kwargs.setdefault("log_config", None)
    kwargs.setdefault("access_log", False)
    # X-Forwarded-For is not trusted (TEI ignores it too): the client address only appears in
    # log lines, and one middleware less is measurably cheaper per request.
    kwargs.setdefault("proxy_headers", False)
    return uvicorn.Config(app, http=read_deadline_protocol(header_timeout, body_timeout), **kwargs)
