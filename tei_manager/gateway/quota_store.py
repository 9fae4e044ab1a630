"""Where tenants' rate and token buckets live: in this process, or in Redis for several gateways.

One gateway keeps its buckets in memory (`MemoryQuotaStore`, the default). Behind a load balancer,
N gateways with their own buckets would let N times each quota through, so `gateway.quota_store`
can name a Redis server that all of them share (`RedisQuotaStore`).

Both follow the same rules (see `qos.py`): a request takes one request token and an estimate of
its tokens, all or nothing; the answer's counted tokens (`x-compute-tokens`) then replace the
estimate (refund or debt); a rejection says how long to wait (Retry-After). In Redis each bucket
is a hash `{level, last}` updated by one Lua script, atomically, timed by the Redis server's own
clock, so gateways on hosts with skewed clocks still agree. Idle buckets expire (a fresh bucket
starts full, exactly like a bucket that refilled while idle).

When Redis cannot be reached the profile decides (`on_unavailable`): `open` admits requests
without quota checks (availability first; a warning is logged once per outage), `closed` refuses
them with 503 (quotas first). Either way the gateway does not wait on a dead Redis: after a
failure it skips Redis for `retry_interval_s` before trying again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from tei_manager.errors import GatewayError
from tei_manager.gateway.qos import AdmissionController, Rejection, TenantLimits

if TYPE_CHECKING:
    from tei_manager.core.models import QuotaStoreSettings

log = logging.getLogger(__name__)

OnUnavailable = Literal["open", "closed"]


class QuotaStoreUnavailable(Exception):
    """The shared store cannot be reached and the profile says `on_unavailable: closed`."""


class QuotaStore(Protocol):
    """Rate and token buckets per tenant; every method is safe to call concurrently."""

    async def take(self, tenant: str, limits: TenantLimits, estimated_tokens: int) -> Rejection | None:
        """Take one request and `estimated_tokens`, or take nothing and say why and for how long."""

    async def reconcile(self, tenant: str, limits: TenantLimits, estimated: int, actual: int) -> None:
        """Replace a reserved estimate with the counted tokens."""

    async def token_level(self, tenant: str, limits: TenantLimits) -> float | None:
        """Tokens left in the tenant's minute budget (None: no budget)."""

    async def close(self) -> None: ...


class MemoryQuotaStore:
    """The buckets of one gateway process, kept by its AdmissionController."""

    def __init__(self, admission: AdmissionController) -> None:
        self._admission = admission

    async def take(self, tenant: str, limits: TenantLimits, estimated_tokens: int) -> Rejection | None:
        return self._admission.check_rates(tenant, estimated_tokens)

    async def reconcile(self, tenant: str, limits: TenantLimits, estimated: int, actual: int) -> None:
        self._admission.reconcile_tokens(tenant, estimated, actual)

    async def token_level(self, tenant: str, limits: TenantLimits) -> float | None:
        return self._admission.token_level(tenant)

    async def close(self) -> None:
        return None


# KEYS: requests bucket, tokens bucket. ARGV: requests capacity, rate/s; tokens capacity, rate/s;
# tokens to take. A capacity of 0 means "no such limit". Returns {code, wait_ms}: 0 = taken,
# 1 = over the request rate, 2 = over the token budget.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function load(key, cap, rate)
  local h = redis.call('HMGET', key, 'level', 'last')
  local level, last = tonumber(h[1]), tonumber(h[2])
  if level == nil then return cap end
  if now > last then level = math.min(cap, level + (now - last) * rate) end
  return math.min(level, cap)
end
local function save(key, level, cap, rate)
  redis.call('HSET', key, 'level', tostring(level), 'last', tostring(now))
  redis.call('EXPIRE', key, math.ceil(cap / rate) + 60)
end
local rcap, rrate = tonumber(ARGV[1]), tonumber(ARGV[2])
local tcap, trate = tonumber(ARGV[3]), tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local rlevel, tlevel
if rcap > 0 then
  rlevel = load(KEYS[1], rcap, rrate)
  if rlevel < 1 then return {1, math.ceil((1 - rlevel) / rrate * 1000)} end
end
if tcap > 0 then
  tlevel = load(KEYS[2], tcap, trate)
  local need = math.min(want, tcap)
  if tlevel < need then return {2, math.ceil((need - tlevel) / trate * 1000)} end
end
if rcap > 0 then save(KEYS[1], rlevel - 1, rcap, rrate) end
if tcap > 0 then save(KEYS[2], tlevel - want, tcap, trate) end
return {0, 0}
"""

# KEYS: tokens bucket. ARGV: capacity, rate/s, delta (+ refund, - debt). Returns the new level.
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cap, rate, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'level', 'last')
local level, last = tonumber(h[1]), tonumber(h[2])
if level == nil then level = cap
elseif now > last then level = math.min(cap, level + (now - last) * rate) end
if delta ~= 0 then
  level = math.min(cap, level + delta)
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'last', tostring(now))
  redis.call('EXPIRE', KEYS[1], math.ceil(cap / rate) + 60)
end
return tostring(level)
"""


def _request_bucket(limits: TenantLimits) -> tuple[float, float]:
    """(capacity, refill per second) of the request-rate bucket, (0, 0) without a rate limit."""
    rps = limits.requests_per_second
    if not rps:
        return 0.0, 0.0
    return float(limits.burst or max(1.0, 2 * rps)), float(rps)


def _token_bucket(limits: TenantLimits) -> tuple[float, float]:
    tpm = limits.tokens_per_minute
    if not tpm:
        return 0.0, 0.0
    return float(tpm), tpm / 60.0


class RedisQuotaStore:
    """Buckets shared by every gateway that names the same Redis and profile."""

    def __init__(self, url: str, *, profile: str, on_unavailable: OnUnavailable = "open", password: str | None = None,
                 timeout_s: float = 0.25, retry_interval_s: float = 1.0) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise GatewayError("gateway.quota_store needs the redis client, which is not installed",
                               fix="pip install 'tei-manager[redis]'") from None

        self._client = aioredis.Redis.from_url(
            url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry_on_timeout=False)
        self._take = self._client.register_script(_TAKE)
        self._adjust = self._client.register_script(_ADJUST)
        self._prefix = f"tei-manager:quota:{{{profile}}}"
        self.on_unavailable = on_unavailable
        self._retry_interval_s = retry_interval_s
        self._down_until = 0.0
        self._outage_logged = False

    def _keys(self, tenant: str) -> list[str]:
        return [f"{self._prefix}:{tenant}:requests", f"{self._prefix}:{tenant}:tokens"]

    @property
    def available(self) -> bool:
        """False while a recent failure keeps the gateway from asking Redis."""
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + self._retry_interval_s
        if not self._outage_logged:
            self._outage_logged = True
            action = "admitting requests without quota checks" if self.on_unavailable == "open" else \
                "refusing requests with 503"
            log.warning("the quota store (Redis) is unreachable (%s: %s); %s until it answers again "
                        "(gateway.quota_store.on_unavailable: %s)", type(exc).__name__, exc, action,
                        self.on_unavailable)

    def _recovered(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.warning("the quota store (Redis) answers again; quotas are enforced")

    def _unavailable(self) -> None:
        if self.on_unavailable == "closed":
            raise QuotaStoreUnavailable("the shared quota store (Redis) is unreachable")

    async def take(self, tenant: str, limits: TenantLimits, estimated_tokens: int) -> Rejection | None:
        rcap, rrate = _request_bucket(limits)
        tcap, trate = _token_bucket(limits)
        if not rcap and not tcap:
            return None
        if not self.available:
            self._unavailable()
            return None
        from redis.exceptions import RedisError

        try:
            code, wait_ms = await self._take(keys=self._keys(tenant),
                                             args=[rcap, rrate, tcap, trate, max(0, estimated_tokens)])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            self._unavailable()
            return None
        self._recovered()
        wait = int(wait_ms) / 1000
        if int(code) == 1:
            return Rejection("rate_limit", wait,
                             f"tenant '{tenant}' is over its rate of {limits.requests_per_second:g} requests/s")
        if int(code) == 2:
            return Rejection("token_limit", wait,
                             f"tenant '{tenant}' is over its budget of {limits.tokens_per_minute} tokens/min")
        return None

    async def _adjust_tokens(self, tenant: str, limits: TenantLimits, delta: float) -> float | None:
        tcap, trate = _token_bucket(limits)
        if not tcap or not self.available:
            return None
        from redis.exceptions import RedisError

        try:
            level = await self._adjust(keys=self._keys(tenant)[1:], args=[tcap, trate, delta])
        except (RedisError, OSError) as exc:
            self._failed(exc)  # a lost refund or debt is bounded by one request's tokens
            return None
        self._recovered()
        value = float(level)
        return value if math.isfinite(value) else None

    async def reconcile(self, tenant: str, limits: TenantLimits, estimated: int, actual: int) -> None:
        if actual != estimated:
            await self._adjust_tokens(tenant, limits, float(estimated - actual))

    async def token_level(self, tenant: str, limits: TenantLimits) -> float | None:
        return await self._adjust_tokens(tenant, limits, 0.0)

    async def close(self) -> None:
        await self._client.aclose()


def _read_password(settings: QuotaStoreSettings) -> str | None:
    ref = settings.password
    if ref is None:
        return None
    where = "gateway.quota_store.password"
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise GatewayError(f"environment variable {ref.env} is not set", where=where,
                               fix=f"export {ref.env}=<the Redis password> where the gateway runs")
        return value
    assert ref.file is not None
    try:
        value = Path(ref.file).read_text().strip()
    except OSError as exc:
        raise GatewayError(f"cannot read {ref.file}: {exc.strerror}", where=where,
                           fix="point `file` at a readable file holding the Redis password") from None
    if not value:
        raise GatewayError(f"{ref.file} is empty", where=where, fix="write the Redis password into it")
    return value


def open_quota_store(settings: QuotaStoreSettings | None, *, profile: str,
                     admission: AdmissionController) -> QuotaStore:
    """The store a profile asks for: Redis when `gateway.quota_store` is set, else this process."""
    if settings is None:
        return MemoryQuotaStore(admission)
    return RedisQuotaStore(settings.url, profile=profile, on_unavailable=settings.on_unavailable,
                           password=_read_password(settings))
