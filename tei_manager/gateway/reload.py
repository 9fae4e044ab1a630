"""Hot reload: rebuild the gateway's configuration when the profile file changes, or on SIGHUP.

The new configuration is built off the event loop (reading files and keys, planning) and then
swapped in whole on the loop, so requests in flight are never dropped: they finish on the
configuration they started with.  A profile that fails to load leaves the old one in force
and is reported in the log and in `tei_manager_gateway_reloads_total{result="error"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import TypeVar

from tei_manager.gateway.background import cancel_and_wait

log = logging.getLogger(__name__)

C = TypeVar("C")


class Reloader:
    def __init__(
        self,
        build: Callable[[], C],
        apply: Callable[[C], None],
        on_result: Callable[[bool], None],
        *,
        path: str | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self._build = build
        self._apply = apply
        self._on_result = on_result
        self._path = path
        self._interval_s = interval_s
        self._mtime = self._stat()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._signal_installed = False

    def _stat(self) -> tuple[float, int] | None:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def trigger(self) -> None:
        """Reload soon (SIGHUP handler; safe to call from the event loop)."""
        self._wake.set()

    async def reload_now(self) -> bool:
        try:
            config = await asyncio.to_thread(self._build)
        except Exception as exc:  # noqa: BLE001 - any failure to build keeps serving with the old profile
            log.error("profile reload failed, keeping the previous one:\n%s", exc)
            self._on_result(False)
            return False
        self._apply(config)
        self._on_result(True)
        log.info("profile reloaded")
        return True

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):  # a timeout is the polling interval passing
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            forced = self._wake.is_set()
            self._wake.clear()
            current = self._stat()
            if forced or (current is not None and current != self._mtime):
                self._mtime = current
                await self.reload_now()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.trigger)
            self._signal_installed = True
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass  # not the main thread (tests) or no SIGHUP (Windows): file watching still works
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self._signal_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await cancel_and_wait(self._task)
