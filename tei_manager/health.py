"""Readiness and liveness of instances: HTTP probes and the restart/back-off bookkeeping.

The probes are thin httpx calls.  `HealthTracker` is pure: it is fed probe outcomes and the
current time from an injectable `Clock`, and answers "restart now?"; the supervisor and the
unit tests drive it, the latter with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from tei_manager.core.addresses import connect_host, http_url
from tei_manager.core.plan import HEALTH_PATH


class Clock(Protocol):
    """Time source: monotonic seconds and sleeping.  Tests inject a fake one."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def probe_host(bind: str) -> str:
    """The address to reach an instance published on `bind` (wildcards mean loopback)."""
    return connect_host(bind)


def base_url(bind: str, port: int) -> str:
    return http_url(bind, port)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    latency_s: float = 0.0

    def describe(self) -> str:
        if self.ok:
            return f"healthy ({self.latency_s * 1000:.0f} ms)"
        if self.status_code is not None:
            return f"/health answered {self.status_code}"
        return self.error or "no answer"


def probe(bind: str, port: int, *, path: str = HEALTH_PATH, timeout_s: float = 2.0,
          client: httpx.Client | None = None) -> ProbeResult:
    """GET /health: ok on 200.  TEI opens its port only after warm-up, so "connection refused"
    during start-up is normal; callers decide how long to tolerate it."""
    url = base_url(bind, port) + path
    started = time.monotonic()
    try:
        if client is not None:
            response = client.get(url, timeout=timeout_s)
        else:
            response = httpx.get(url, timeout=timeout_s)
    except httpx.ConnectError:
        return ProbeResult(False, error="connection refused (not listening yet?)",
                           latency_s=time.monotonic() - started)
    except httpx.TimeoutException:
        return ProbeResult(False, error=f"no answer within {timeout_s:g} s", latency_s=time.monotonic() - started)
    except httpx.HTTPError as exc:
        return ProbeResult(False, error=f"{type(exc).__name__}: {exc}", latency_s=time.monotonic() - started)
    return ProbeResult(response.status_code == 200, status_code=response.status_code,
                       latency_s=time.monotonic() - started)


@dataclass(frozen=True)
class InfoAnswer:
    """What GET /info gave: the status (None: no answer) and the JSON object on a 200."""

    status_code: int | None
    body: dict[str, Any] | None = None

    @property
    def refused(self) -> bool:
        """The instance wants a key the caller did not present (TEI answers a bare 401)."""
        return self.status_code in (401, 403)


def fetch_info(bind: str, port: int, *, headers: Mapping[str, str] | None = None,
               timeout_s: float = 5.0) -> InfoAnswer:
    """GET /info (TEI's model description), with the instance's key when it has one."""
    try:
        response = httpx.get(base_url(bind, port) + "/info", headers=dict(headers or {}), timeout=timeout_s)
    except httpx.HTTPError:
        return InfoAnswer(None)
    if response.status_code != 200:
        return InfoAnswer(response.status_code)
    try:
        data = response.json()
    except ValueError:
        return InfoAnswer(response.status_code)
    return InfoAnswer(response.status_code, data if isinstance(data, dict) else None)


class HealthProbe(Protocol):
    """How instances are probed.  `HttpHealthProbe` is the real one; tests and demos can pass a
    probe that answers from a fake backend (tei_manager.backends.fake.FakeHealthProbe)."""

    def health(self, bind: str, port: int, path: str = HEALTH_PATH, *, timeout_s: float = 2.0) -> ProbeResult: ...

    def info(self, bind: str, port: int, *, headers: Mapping[str, str] | None = None) -> InfoAnswer: ...


class HttpHealthProbe:
    """GET /health and /info over HTTP."""

    def health(self, bind: str, port: int, path: str = HEALTH_PATH, *, timeout_s: float = 2.0) -> ProbeResult:
        return probe(bind, port, path=path, timeout_s=timeout_s)

    def info(self, bind: str, port: int, *, headers: Mapping[str, str] | None = None) -> InfoAnswer:
        return fetch_info(bind, port, headers=headers)


# ------------------------------------------------------------------------------------ back-off
@dataclass(frozen=True)
class BackoffPolicy:
    """When the supervisor restarts an instance.

    An instance is restarted after `failure_threshold` consecutive failed probes (or at once
    when its process/container has exited).  Restarts in a row wait `initial_delay_s`,
    then x`factor` each time, up to `max_delay_s`; once the instance has stayed healthy for
    `reset_after_s` the delay starts over.  After a (re)start, failed probes are not counted for
    `startup_grace_s` (models download and warm up before the port opens) unless it exits.
    """

    failure_threshold: int = 3
    initial_delay_s: float = 5.0
    factor: float = 2.0
    max_delay_s: float = 300.0
    reset_after_s: float = 600.0
    startup_grace_s: float = 600.0

    def delay(self, restarts_in_a_row: int) -> float:
        """Wait before restart number `restarts_in_a_row + 1` of a streak."""
        if restarts_in_a_row <= 0:
            return 0.0
        return min(self.initial_delay_s * self.factor ** (restarts_in_a_row - 1), self.max_delay_s)


Phase = Literal["starting", "healthy", "unhealthy", "down"]


@dataclass
class HealthTracker:
    """Probe history of one instance and the restart decision.  Pure: time comes in as `now`."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    phase: Phase = "starting"
    consecutive_failures: int = 0
    streak: int = 0  # restarts since the instance was last healthy for reset_after_s
    restarts: int = 0  # all restarts this tracker made
    started_at: float | None = None
    healthy_since: float | None = None
    last_restart_at: float | None = None
    last_error: str | None = None

    def started(self, now: float) -> None:
        """The instance was (re)started at `now`: start-up grace begins."""
        self.phase = "starting"
        self.started_at = now
        self.consecutive_failures = 0
        self.healthy_since = None

    def record(self, ok: bool, now: float, *, error: str | None = None, exited: bool = False) -> None:
        """Feed one observation: a probe result, or `exited=True` when the process is gone."""
        if self.started_at is None:
            self.started_at = now
        if exited:
            self.phase = "down"
            self.consecutive_failures = max(self.consecutive_failures + 1, self.policy.failure_threshold)
            self.healthy_since = None
            self.last_error = error or "exited"
            return
        if ok:
            if self.phase != "healthy":
                self.healthy_since = now
            self.phase = "healthy"
            self.consecutive_failures = 0
            self.last_error = None
            if self.healthy_since is not None and now - self.healthy_since >= self.policy.reset_after_s:
                self.streak = 0
            return
        self.last_error = error
        if self.phase == "starting" and now - self.started_at < self.policy.startup_grace_s:
            return  # still downloading / warming up
        self.consecutive_failures += 1
        self.healthy_since = None
        if self.consecutive_failures >= self.policy.failure_threshold:
            self.phase = "unhealthy"

    def due(self, now: float) -> bool:
        """True when the instance should be restarted now (threshold reached and back-off over)."""
        if self.phase not in ("unhealthy", "down"):
            return False
        return now >= self.next_restart_at()

    def next_restart_at(self) -> float:
        if self.last_restart_at is None:
            return float("-inf")
        return self.last_restart_at + self.policy.delay(self.streak)

    def restarted(self, now: float) -> None:
        """A restart was performed at `now`."""
        self.restarts += 1
        self.streak += 1
        self.last_restart_at = now
        self.started(now)
