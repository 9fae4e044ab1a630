"""How uvicorn should serve the gateway: with a deadline on request headers.

uvicorn times out idle keep-alive connections but not a client that sends its headers one byte
at a time (slowloris): such connections pile up until the process runs out of descriptors.
`HeaderDeadline` closes a connection whose request line and headers are not complete within
`HEADER_TIMEOUT_S` of their first byte (or of the connection).  Bodies are time-capped inside the
app (see body.py), where the size cap is checked as they stream.

    uvicorn.run(app, host=..., port=..., **server_options())

It also rate-limits uvicorn's per-request warnings ("Invalid HTTP request received."): a client
sending garbage must not be able to flood the log, one line per message per minute is enough.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # the faster parser, when installed (uvicorn[standard]); uvicorn's own "auto" choice
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover
    _Base = H11Protocol  # type: ignore[assignment,misc]

HEADER_TIMEOUT_S = 10.0


def guarded_protocol(header_timeout_s: float = HEADER_TIMEOUT_S, base: type[Any] = _Base) -> type[Any]:
    """`base` (a uvicorn HTTP protocol class) that enforces a header deadline."""

    class HeaderDeadline(base):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm()
            elif self._awaiting_headers():
                self._arm()  # a deadline from the first byte; more bytes do not extend it
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: uvicorn's keep-alive timeout takes over until bytes come

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline


class OncePerInterval(logging.Filter):
    """Lets each distinct warning message through at most once per `interval_s`, with a count of
    the ones it held back."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno >= logging.ERROR:
            return True
        key = str(record.msg)
        now = time.monotonic()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval_s:g} s)"
        return True


def quiet_uvicorn_warnings(interval_s: float = 60.0) -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, OncePerInterval) for f in logger.filters):
        logger.addFilter(OncePerInterval(interval_s))


def server_options(header_timeout_s: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` (also rate-limits uvicorn's warnings)."""
    quiet_uvicorn_warnings()
    return {"http": guarded_protocol(header_timeout_s), "timeout_keep_alive": 5}
