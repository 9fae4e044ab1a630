"""Instance restarts for the metrics, read from the supervisor's event log.

The supervisor (`tei-manager apply`/`watch`) records what it sees and does in the profile's
event log (tei_manager.state).  The gateway follows that log and counts every restart in
`tei_manager_gateway_instance_restarts_total{reason}`: `oom` when the instance's last exit was
the out-of-memory killer, else `crash`.  The OOM alert in deploy/prometheus/alerts.yml reads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tei_manager.metrics import GatewayMetrics
from tei_manager.state import RecordedEvent, now, read_events

log = logging.getLogger(__name__)

RESTART_KINDS = {"restarted", "engine-restarted"}


class RestartFeed:
    def __init__(self, profile: str, metrics: GatewayMetrics, *, clock: Callable[[], float] = now) -> None:
        self.profile = profile
        self._metrics = metrics
        self._since = clock()  # history before the gateway started is not re-counted
        self._oom: set[str] = set()

    def consume(self, events: list[RecordedEvent]) -> None:
        for event in sorted(events, key=lambda e: e.at):
            if event.at <= self._since:
                continue
            self._since = event.at
            if event.kind == "exited":
                if "out-of-memory" in event.detail or "oom" in event.detail.lower():
                    self._oom.add(event.instance)
                else:
                    self._oom.discard(event.instance)
            elif event.kind in RESTART_KINDS:
                reason = "oom" if event.instance in self._oom else "crash"
                self._oom.discard(event.instance)
                self._metrics.instance_restarted(instance=event.instance, reason=reason)

    async def poll(self) -> None:
        try:
            events = await asyncio.to_thread(read_events, self.profile, since=self._since)
        except Exception as exc:  # noqa: BLE001 - an unreadable or malformed log must not take the gateway down
            log.debug("cannot read the supervisor's events: %s", exc)
            return
        self.consume(events)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.poll()
