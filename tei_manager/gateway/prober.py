"""The gateway's own health prober: GET /health on every replica, every few seconds.

A replica that fails a probe is taken out of rotation; one that passes is put back.  Requests
that fail to connect also take a replica out at once (see proxy.py); the prober is what brings
it back.  Restarting instances is the supervisor's job, not the gateway's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from tei_manager.gateway.background import cancel_and_wait
from tei_manager.gateway.upstream import ConnectionPool, UpstreamError

log = logging.getLogger(__name__)


async def probe(pool: ConnectionPool, url: str, timeout_s: float) -> bool:
    try:
        response = await pool.request(url, "GET", "/health", b"", {}, timeout_s)
    except UpstreamError:
        return False
    return response.status == 200


class Prober:
    def __init__(
        self,
        pool: ConnectionPool,
        urls: Callable[[], Iterable[str]],
        on_result: Callable[[str, bool], None],
        *,
        interval_s: float = 2.0,
        timeout_s: float = 2.0,
    ) -> None:
        self._pool = pool
        self._urls = urls
        self._on_result = on_result
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    async def probe_all(self) -> None:
        urls = sorted(set(self._urls()))
        results = await asyncio.gather(*(probe(self._pool, u, self.timeout_s) for u in urls))
        for url, ok in zip(urls, results, strict=True):  # gather answers one result per url
            self._on_result(url, ok)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.probe_all()
            except Exception:  # a bug here must not stop probing for good
                log.exception("health probe round failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
