"""Admission control: per-tenant rate limits, token budgets, concurrency and priority lanes.

Pure on purpose: no I/O, no asyncio, time comes from an injected clock.  The gateway wraps it
with futures (a waiting `Ticket` gets a `waker` callback) so every rule here is testable with a
fake clock and plain function calls.

The rules, in the order a request meets them:

1. **Requests per second** — a token bucket of `burst` (default 2x the rate) refilled at
   `requests_per_second`.  Empty bucket -> reject now, `retry_after` = time until one refills.
2. **Tokens per minute** — a bucket of `tokens_per_minute` refilled continuously.  A request
   reserves an *estimate* of its tokens before it runs; when the answer comes back the gateway
   calls `reconcile` with the count the upstream reported (`x-compute-tokens`), so the bucket
   ends up charged with real tokens.  Under-estimates push the bucket into debt, which the next
   requests wait out; over-estimates are refunded.  A request larger than the whole minute budget
   is let through when the bucket is full, so a single big request is never refused forever.
3. **Concurrency** — every upstream request (a split client call makes one per chunk) needs room
   in its pool (one pool per deployment) in two units: one request slot (capacity = healthy
   replicas x per-replica requests) and one *input permit per input* (capacity = healthy replicas x
   the runtime's `max_concurrent_requests`, which TEI and the fallback worker count per input and
   answer 429 beyond).  With `max_concurrent` set it also needs a slot of its tenant.  If it does
   not fit it waits; waiters are admitted high before normal before low, first come first served
   within a class, and a waiter too big for the room left holds back the ones behind it in its
   pool (so a 32-input chunk is not starved by a stream of 1-input calls).  A waiter held back
   only by its own tenant's `max_concurrent` holds back nobody else.  The wait is bounded by the
   caller (`Quota.max_wait_ms`) who calls `cancel` on timeout: there is no unbounded queue.

A rejected request never consumes anything: rate and token checks are all-or-nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Clock = Callable[[], float]
Priority = Literal["high", "normal", "low"]
RejectReason = Literal["rate_limit", "token_limit", "queue_timeout", "no_capacity"]

PRIORITY_RANK: dict[str, int] = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True)
class TenantLimits:
    """The slice of `Tenant`/`Quota` admission needs (None = unlimited)."""

    priority: Priority = "normal"
    requests_per_second: float | None = None
    burst: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    max_wait_ms: int = 2000


class TokenBucket:
    """A continuously refilled bucket. `level` may go negative after a reconcile (debt)."""

    def __init__(self, capacity: float, rate_per_s: float, now: float, level: float | None = None) -> None:
        self.capacity = capacity
        self.rate = rate_per_s
        self.level = capacity if level is None else min(level, capacity)
        self._last = now

    def refill(self, now: float) -> None:
        if now > self._last:
            self.level = min(self.capacity, self.level + (now - self._last) * self.rate)
        self._last = max(self._last, now)

    def shortfall_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken; 0 when it can be taken now."""
        self.refill(now)
        need = min(amount, self.capacity)  # never ask for more than a full bucket holds
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    retry_after_s: float
    message: str

    @property
    def retry_after_header(self) -> str:
        # Whole seconds (RFC 9110 delay-seconds); at least 1 so clients never spin.
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(eq=False)
class Ticket:
    """One request's claim on a pool slot.  `state` moves waiting -> admitted -> released."""

    seq: int
    tenant: str
    pool: str
    rank: int
    enqueued_at: float
    inputs: int = 1  # input permits this upstream request takes
    state: Literal["waiting", "admitted", "released", "cancelled"] = "waiting"
    admitted_at: float | None = None
    waker: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def waited_s(self) -> float:
        return 0.0 if self.admitted_at is None else self.admitted_at - self.enqueued_at


class _TenantState:
    def __init__(self, limits: TenantLimits, now: float, previous: _TenantState | None) -> None:
        self.limits = limits
        self.in_flight: int = previous.in_flight if previous else 0
        self.requests: TokenBucket | None = self._bucket(
            limits.requests_per_second and float(limits.burst or max(1.0, 2 * limits.requests_per_second)),
            limits.requests_per_second,
            now,
            previous.requests if previous else None,
        )
        self.tokens: TokenBucket | None = self._bucket(
            limits.tokens_per_minute and float(limits.tokens_per_minute),
            limits.tokens_per_minute and limits.tokens_per_minute / 60.0,
            now,
            previous.tokens if previous else None,
        )

    @staticmethod
    def _bucket(capacity: float | None, rate: float | None, now: float, old: TokenBucket | None) -> TokenBucket | None:
        if not capacity or not rate:
            return None
        # Keep what was already spent across a reload, so editing a profile is not a free refill.
        return TokenBucket(capacity, rate, now, level=old.level if old else None)

    def can_start(self) -> bool:
        return self.limits.max_concurrent is None or self.in_flight < self.limits.max_concurrent


class AdmissionController:
    """All admission state of one gateway.  Not thread-safe: call it from the event loop only."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tenants: dict[str, _TenantState] = {}
        self._capacity: dict[str, int | None] = {}
        self._in_flight: dict[str, int] = {}
        self._input_capacity: dict[str, int | None] = {}
        self._inputs_in_flight: dict[str, int] = {}
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()

    # ---- configuration (startup and hot reload) --------------------------------------------
    def configure_tenant(self, tenant: str, limits: TenantLimits) -> None:
        self._tenants[tenant] = _TenantState(limits, self._clock(), self._tenants.get(tenant))
        self._drain()

    def remove_tenants_except(self, keep: set[str]) -> None:
        for name in [t for t in self._tenants if t not in keep]:
            if self._tenants[name].in_flight == 0:
                del self._tenants[name]

    def configure_pool(self, pool: str, capacity: int | None, inputs: int | None = None) -> None:
        """Set a pool's capacity in requests and in input permits (None = unlimited); raising
        either admits waiters at once."""
        self._capacity[pool] = capacity
        self._input_capacity[pool] = inputs
        self._in_flight.setdefault(pool, 0)
        self._inputs_in_flight.setdefault(pool, 0)
        self._drain()

    def limits(self, tenant: str) -> TenantLimits:
        state = self._tenants.get(tenant)
        return state.limits if state else TenantLimits()

    # ---- rate and token budgets ---------------------------------------------------------------
    def check_rates(self, tenant: str, estimated_tokens: int) -> Rejection | None:
        """Take one request and `estimated_tokens` from the tenant's buckets, or reject and take nothing."""
        state = self._tenant(tenant)
        now = self._clock()
        if state.requests is not None:
            wait = state.requests.shortfall_s(1, now)
            if wait > 0:
                rps = state.limits.requests_per_second
                return Rejection("rate_limit", wait, f"tenant '{tenant}' is over its rate of {rps:g} requests/s")
        if state.tokens is not None:
            wait = state.tokens.shortfall_s(estimated_tokens, now)
            if wait > 0:
                tpm = state.limits.tokens_per_minute
                return Rejection("token_limit", wait, f"tenant '{tenant}' is over its budget of {tpm} tokens/min")
        if state.requests is not None:
            state.requests.take(1)
        if state.tokens is not None:
            state.tokens.take(estimated_tokens)
        return None

    def reconcile_tokens(self, tenant: str, estimated: int, actual: int) -> None:
        """Replace a reserved estimate with the counted tokens (refund or debt)."""
        state = self._tenants.get(tenant)
        if state is None or state.tokens is None or actual == estimated:
            return
        state.tokens.refill(self._clock())
        if actual > estimated:
            state.tokens.take(actual - estimated)
        else:
            state.tokens.give(estimated - actual)

    def token_level(self, tenant: str) -> float | None:
        state = self._tenants.get(tenant)
        if state is None or state.tokens is None:
            return None
        state.tokens.refill(self._clock())
        return state.tokens.level

    # ---- concurrency and priority -------------------------------------------------------------
    def acquire(self, tenant: str, pool: str, inputs: int = 1) -> Ticket:
        """A ticket for one upstream request of `inputs` inputs: admitted now, or waiting for
        `waker` to be called."""
        state = self._tenant(tenant)
        now = self._clock()
        ticket = Ticket(next(self._seq), tenant, pool, PRIORITY_RANK[state.limits.priority], now, max(1, inputs))
        # Join the line, then let the line move: the newcomer is admitted now only if nobody of
        # its class or above is held back in front of it.
        self._waiting.append(ticket)
        self._waiting.sort(key=lambda t: (t.rank, t.seq))
        self._drain()
        return ticket

    def release(self, ticket: Ticket) -> None:
        """Give back an admitted ticket's slots; waiters that now fit are admitted (their wakers run)."""
        if ticket.state != "admitted":
            return
        ticket.state = "released"
        self._in_flight[ticket.pool] -= 1
        self._inputs_in_flight[ticket.pool] -= ticket.inputs
        state = self._tenants.get(ticket.tenant)
        if state is not None:
            state.in_flight -= 1
        self._drain()

    def cancel(self, ticket: Ticket) -> bool:
        """Withdraw a waiting ticket (its wait ran out).  False if it was admitted meanwhile."""
        if ticket.state != "waiting":
            return False
        ticket.state = "cancelled"
        self._waiting.remove(ticket)
        return True

    def in_flight(self, pool: str) -> int:
        return self._in_flight.get(pool, 0)

    def inputs_in_flight(self, pool: str) -> int:
        return self._inputs_in_flight.get(pool, 0)

    def waiting(self, pool: str | None = None) -> int:
        return sum(1 for t in self._waiting if pool is None or t.pool == pool)

    def tenant_in_flight(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.in_flight if state else 0

    # ---- internals ----------------------------------------------------------------------------
    def _tenant(self, tenant: str) -> _TenantState:
        if tenant not in self._tenants:
            self._tenants[tenant] = _TenantState(TenantLimits(), self._clock(), None)
        return self._tenants[tenant]

    def _pool_fits(self, ticket: Ticket) -> bool:
        pool = ticket.pool
        capacity = self._capacity.get(pool)
        if capacity is not None and self._in_flight.get(pool, 0) >= capacity:
            return False
        inputs = self._input_capacity.get(pool)
        if inputs is None or capacity == 0:
            return True
        busy = self._inputs_in_flight.get(pool, 0)
        # A request bigger than the whole pool still runs, alone, rather than wait forever.
        return busy + ticket.inputs <= inputs or busy == 0

    def _admit(self, ticket: Ticket, now: float) -> None:
        ticket.state = "admitted"
        ticket.admitted_at = now
        self._in_flight[ticket.pool] = self._in_flight.get(ticket.pool, 0) + 1
        self._inputs_in_flight[ticket.pool] = self._inputs_in_flight.get(ticket.pool, 0) + ticket.inputs
        self._tenant(ticket.tenant).in_flight += 1

    def _drain(self) -> None:
        now = self._clock()
        admitted: list[Ticket] = []
        full: set[str] = set()  # pools where a waiter did not fit: nobody behind it may pass
        for ticket in list(self._waiting):  # already sorted high -> low, then by arrival
            if ticket.pool in full:
                continue
            if not self._pool_fits(ticket):
                full.add(ticket.pool)
                continue
            if not self._tenant(ticket.tenant).can_start():
                continue
            self._waiting.remove(ticket)
            self._admit(ticket, now)
            admitted.append(ticket)
        for ticket in admitted:
            if ticket.waker is not None:
                ticket.waker()
