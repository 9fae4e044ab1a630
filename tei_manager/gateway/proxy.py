"""Send one request to a deployment: pick a replica, retry once elsewhere on failure.

Embed, rerank and tokenize calls are idempotent, so a request that could not connect, lost its
connection mid-flight, or got 503 (the runtime says it is unhealthy) is sent once more to
another healthy replica.  The failing replica is reported through `on_health` so the gateway
takes it out of rotation at once, before the prober notices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tei_manager.gateway.routing import Balancer, Route
from tei_manager.gateway.upstream import (
    ConnectFailed,
    ConnectionPool,
    UpstreamBroken,
    UpstreamResponse,
    UpstreamTimeout,
)

JSON_HEADERS = {"content-type": "application/json"}


class NoReplica(Exception):
    """No healthy replica answered; `tried` lists the URLs that failed."""

    def __init__(self, route: Route, tried: list[str], last_error: str | None) -> None:
        self.route = route
        self.tried = tried
        self.last_error = last_error
        super().__init__(last_error or "no healthy replica")


class UpstreamTimedOut(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


@dataclass
class Forwarded:
    response: UpstreamResponse
    url: str
    retried: bool


class Proxy:
    def __init__(
        self,
        pool: ConnectionPool,
        balancer: Balancer,
        *,
        on_health: Callable[[str, bool], None],
        on_retry: Callable[[Route, str], None] = lambda route, url: None,
    ) -> None:
        self._pool = pool
        self._balancer = balancer
        self._on_health = on_health
        self._on_retry = on_retry

    async def forward(self, route: Route, path: str, body: bytes, timeout_s: float) -> Forwarded:
        tried: list[str] = []
        last_error: str | None = None
        for attempt in range(2):
            url = self._balancer.pick(route, exclude=tried)
            if url is None:
                break
            if attempt:
                self._on_retry(route, tried[-1])
            tried.append(url)
            self._balancer.started(url)
            try:
                response = await self._pool.request(url, "POST", path, body, JSON_HEADERS, timeout_s)
            except (ConnectFailed, UpstreamBroken) as exc:
                last_error = str(exc)
                self._on_health(url, False)
                continue
            except UpstreamTimeout:
                # A slow answer is not a dead replica, and resending a long request doubles the load.
                raise UpstreamTimedOut(url) from None
            finally:
                self._balancer.finished(url)
            if response.status == 503 and attempt == 0:
                last_error = f"{url} answered 503"
                self._on_health(url, False)
                continue
            return Forwarded(response, url, retried=attempt > 0)
        raise NoReplica(route, tried, last_error)
