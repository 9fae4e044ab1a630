"""Admit and send the upstream requests of one client call, paced by admission.

A call of n inputs becomes ceil(n / max_client_batch_size) upstream requests ("parts").  Each part
takes its own admission ticket (one request slot and one input permit per input, see qos.py)
before it is sent, so the fan-out never exceeds the inputs the replicas can take: a 1,000-input
call to a replica with 64 permits runs 64 inputs at a time instead of bouncing 429s, and other
tenants' requests interleave with its parts by priority.

The first part waits for the tenant's `max_wait_ms` (its place in line); the later parts of a call
already running wait for up to the upstream timeout, since the call is then known to be servable
in sequence.  A part that fails stops the sending of the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tei_manager.gateway.errors import Overloaded
from tei_manager.gateway.proxy import Forwarded, Proxy
from tei_manager.gateway.qos import AdmissionController, Ticket
from tei_manager.gateway.routing import Route


@dataclass(frozen=True)
class Part:
    body: bytes
    inputs: int


class Dispatcher:
    def __init__(
        self,
        qos: AdmissionController,
        proxy: Proxy,
        *,
        on_admitted: Callable[[Ticket, Route], None],
        on_pool_change: Callable[[Route], None],
    ) -> None:
        self._qos = qos
        self._proxy = proxy
        self._on_admitted = on_admitted
        self._on_pool_change = on_pool_change

    async def run(
        self, tenant: str, route: Route, path: str, parts: Sequence[Part], *, max_wait_s: float, timeout_s: float
    ) -> list[Forwarded]:
        """Every part's answer, in order; stops early (shorter list) when a part is refused."""
        if len(parts) == 1:  # the common case: no task, no list of futures
            ticket = await self.admit(tenant, route, parts[0].inputs, max_wait_s)
            return [await self._send(ticket, route, path, parts[0], timeout_s)]
        tasks: list[asyncio.Task[Forwarded]] = []
        try:
            for n, part in enumerate(parts):
                if any(_failed(t) for t in tasks):
                    break
                ticket = await self.admit(tenant, route, part.inputs, max_wait_s if n == 0 else timeout_s)
                tasks.append(asyncio.ensure_future(self._send(ticket, route, path, part, timeout_s)))
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def admit(self, tenant: str, route: Route, inputs: int, max_wait_s: float) -> Ticket:
        ticket = self._qos.acquire(tenant, route.deployment, inputs)
        if ticket.state == "waiting":
            admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake() -> None:
                if not admitted.done():
                    admitted.set_result(None)

            ticket.waker = wake
            self._on_pool_change(route)
            try:
                await asyncio.wait_for(admitted, max_wait_s)
            except asyncio.TimeoutError:
                if self._qos.cancel(ticket):
                    self._on_pool_change(route)
                    raise Overloaded(
                        f"'{route.model_key}' is busy; waited {max_wait_s * 1000:.0f} ms for room for "
                        f"{inputs} input(s)", retry_after_s=1, reason="queue_timeout",
                    ) from None
            except BaseException:
                # Client gone or server stopping: give the room back whichever state the ticket is in.
                if not self._qos.cancel(ticket):
                    self._qos.release(ticket)
                raise
        self._on_admitted(ticket, route)
        return ticket

    async def _send(self, ticket: Ticket, route: Route, path: str, part: Part, timeout_s: float) -> Forwarded:
        try:
            return await self._proxy.forward(route, path, part.body, timeout_s, inputs=part.inputs)
        finally:
            self._qos.release(ticket)
            self._on_pool_change(route)


def _failed(task: asyncio.Task[Forwarded]) -> bool:
    if not task.done():
        return False
    if task.cancelled() or task.exception() is not None:
        return True
    return task.result().response.status != 200
