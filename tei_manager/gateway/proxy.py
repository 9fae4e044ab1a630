"""Send one request to a deployment: pick a replica, retry once elsewhere on failure.

Embed, rerank and tokenize calls are idempotent, so a request that could not connect, lost its
connection mid-flight (also when the gateway cut it because the replica was taken out of
rotation while it ran, see `ConnectionPool.abort`), got no answer within its per-try deadline
(half the upstream timeout: a hung replica must leave time for the second try), or got 503 (the
runtime says it is unhealthy) is sent once more to another healthy replica.  The failing replica
is reported through `on_health` so the gateway takes it out of rotation at once, before the
prober notices.  A 429 (the replica's permits are taken, e.g. by callers that bypass the
gateway) is also tried once elsewhere, without marking anyone unhealthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
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
Clock = Callable[[], float]


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
        headers_for: Callable[[str], Mapping[str, str]] = lambda url: JSON_HEADERS,
    ) -> None:
        self._pool = pool
        self._headers_for = headers_for
        self._balancer = balancer
        self._on_health = on_health
        self._on_retry = on_retry

    async def forward(
        self, route: Route, path: str, body: bytes, timeout_s: float, inputs: int = 1, clock: Clock = time.monotonic
    ) -> Forwarded:
        tried: list[str] = []
        last_error: str | None = None
        busy: Forwarded | None = None
        timed_out = False
        deadline = clock() + timeout_s
        for attempt in range(2):
            url = self._balancer.pick(route, exclude=tried)
            if url is None:
                break
            if attempt:
                self._on_retry(route, tried[-1])
            tried.append(url)
            left = deadline - clock()
            if left <= 0:
                break
            try_timeout = left / 2 if attempt == 0 and len(route.replicas) > 1 else left
            self._balancer.started(url, inputs)
            try:
                response = await self._pool.request(url, "POST", path, body, dict(self._headers_for(url)),
                                                    try_timeout)
            except (ConnectFailed, UpstreamBroken) as exc:
                last_error = str(exc)
                self._on_health(url, False)
                continue
            except UpstreamTimeout:
                last_error = f"{url} did not answer within {try_timeout:.3g} s"
                timed_out = True
                if attempt == 0 and try_timeout < left:
                    continue  # hung or very slow: the other replica gets the rest of the time
                raise UpstreamTimedOut(url) from None
            finally:
                self._balancer.finished(url, inputs)
            if response.status == 503 and attempt == 0:
                last_error = f"{url} answered 503"
                self._on_health(url, False)
                continue
            if response.status == 429 and attempt == 0:
                busy = Forwarded(response, url, retried=False)
                continue
            return Forwarded(response, url, retried=attempt > 0)
        if busy is not None:
            return busy
        if timed_out:
            raise UpstreamTimedOut(tried[-1])
        raise NoReplica(route, tried, last_error)
