"""One trial: one setting, driven closed-loop with rising concurrency until the p99 SLO breaks.

Concurrency doubles (1, 2, 4, ...) for short bounded steps. The trial stops at the first step whose
p99 is over the SLO or that fails requests, when throughput has stopped rising (the instance is
saturated: more in flight only adds queueing), or at the step cap. Its figure is the best
throughput among the steps that met the SLO without errors.

A *confirmation* (`run_confirmation`) measures a setting again on a fresh instance, one long step
at the concurrency its trial found best (one level lower if that now misses the SLO): the runner's
confirmation round decides on these figures rather than on one short step each.

A setting is *infeasible* when its instance cannot start, dies during the trial (an OOM kill or a
crash), or answers a storm of 5xx or broken connections; such trials stay in the report with the
reason, they are never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass, field

from .loadgen import StepResult, run_step
from .target import Settings, StartFailed, TrialInstance, TrialTarget
from .workload import Workload

#: Share of a step's requests that may fail with 5xx or a broken connection before the setting is
#: called infeasible (a few can be a blip; this many is the instance falling over).
STORM_RATE = 0.2
#: Throughput gain below which one doubling of concurrency counts as "not rising".
PLATEAU_GAIN = 0.05


@dataclass(frozen=True)
class Schedule:
    """How long a trial may take: per-step seconds and the concurrency cap."""

    step_seconds: float = 3.0
    warmup_seconds: float = 0.5
    max_concurrency: int = 64
    request_timeout: float = 30.0
    plateau_steps: int = 2  # doublings without PLATEAU_GAIN before the trial stops
    # The confirmation round: the search's leading settings (and the current one) measured again,
    # ``confirm_rounds`` times each, one step of ``confirm_seconds`` (default: 3 trial steps) each.
    confirm_leaders: int = 2
    confirm_rounds: int = 2
    confirm_step_seconds: float | None = None

    @property
    def confirm_seconds(self) -> float:
        return self.confirm_step_seconds if self.confirm_step_seconds is not None else 3 * self.step_seconds

    @property
    def confirmations_per_setting(self) -> int:
        return self.confirm_rounds if self.confirm_leaders > 0 else 0

    def concurrencies(self) -> list[int]:
        levels, c = [], 1
        while c <= self.max_concurrency:
            levels.append(c)
            c *= 2
        return levels


@dataclass(frozen=True)
class Step:
    concurrency: int
    throughput: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    server_errors: int
    meets_slo: bool

    def to_json(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency, "throughput": round(self.throughput, 2),
            "p50_ms": _r(self.p50_ms), "p99_ms": _r(self.p99_ms), "requests": self.requests,
            "errors": self.errors, "server_errors": self.server_errors, "meets_slo": self.meets_slo,
        }


@dataclass
class TrialResult:
    """What one setting achieved. ``throughput`` is inputs/s at the SLO (0 when even one request
    in flight breaks it); ``infeasible`` holds the reason when the setting cannot run at all."""

    settings: dict[str, int | str]
    steps: list[Step] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    infeasible: str | None = None
    seconds: float = 0.0
    start_seconds: float = 0.0  # of ``seconds``, how long the instance took to become ready
    reported: dict[str, str] = field(default_factory=dict)  # what the instance says it runs at (/info: dtype)

    @property
    def best(self) -> Step | None:
        passing = [s for s in self.steps if s.meets_slo]
        return max(passing, key=lambda s: s.throughput) if passing else None

    @property
    def throughput(self) -> float:
        best = self.best
        return best.throughput if best and self.infeasible is None else 0.0

    @property
    def feasible(self) -> bool:
        return self.infeasible is None

    @property
    def meets_slo(self) -> bool:
        return self.feasible and self.best is not None

    def to_json(self) -> dict[str, object]:
        best = self.best
        return {
            "settings": dict(self.settings),
            "feasible": self.feasible,
            "infeasible": self.infeasible,
            "meets_slo": self.meets_slo,
            "throughput_at_slo": round(self.throughput, 2),
            "concurrency_at_slo": best.concurrency if best else None,
            "p50_ms": _r(best.p50_ms) if best else None,
            "p99_ms": _r(best.p99_ms) if best else None,
            "peak_memory_bytes": self.peak_memory_bytes,
            "seconds": round(self.seconds, 1),
            "reported": dict(self.reported),
            "steps": [s.to_json() for s in self.steps],
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def to_step(result: StepResult, slo_p99_ms: float) -> Step:
    p99 = result.percentile_ms(99)
    return Step(
        concurrency=result.concurrency, throughput=result.throughput, p50_ms=result.percentile_ms(50),
        p99_ms=p99, requests=result.requests, errors=result.errors,
        server_errors=result.server_errors + result.transport_errors,
        meets_slo=p99 is not None and p99 <= slo_p99_ms and result.errors == 0,
    )


def client_batch(settings: Settings, workload: Workload) -> int:
    """Inputs per request: the client batch size under trial for embed, the documents of a query for rerank."""
    if workload.kind == "rerank":
        return workload.documents_per_query
    return int(settings.get("max_client_batch_size", 1))


async def drive(instance: TrialInstance, workload: Workload, settings: Settings, *, slo_p99_ms: float,
                schedule: Schedule, result: TrialResult) -> None:
    """Fill ``result.steps`` with rising concurrency; sets ``result.infeasible`` on a storm or a death."""
    batch = client_batch(settings, workload)
    flat = 0
    offset = 0
    for concurrency in schedule.concurrencies():
        raw = await run_step(
            instance.base_url, workload.path, lambda i: workload.body(i, batch), concurrency=concurrency,
            seconds=schedule.step_seconds, warmup=schedule.warmup_seconds, timeout=schedule.request_timeout,
            offset=offset, headers=instance.headers,
        )
        offset += 10_007  # each step starts elsewhere in the workload
        step = _record(instance, raw, concurrency, slo_p99_ms, result)
        if step is None:
            return
        if raw.client_errors and not raw.requests:
            result.infeasible = f"every request refused with 4xx at concurrency {concurrency} (a limit too low?)"
            return
        if not step.meets_slo:
            return
        previous = [s.throughput for s in result.steps[:-1]]
        if previous and step.throughput < max(previous) * (1 + PLATEAU_GAIN):
            flat += 1
            if flat >= schedule.plateau_steps:
                return
        else:
            flat = 0


def reported_settings(instance: TrialInstance, timeout: float = 5.0) -> dict[str, str]:
    """What the instance says it runs at, from TEI's ``/info`` (``model_dtype``): the runtime's own
    default when the settings name none (the fallback worker picks bfloat16 on CPUs that have it).
    Empty when ``/info`` cannot be read; a trial never fails for it."""
    request = urllib.request.Request(instance.base_url + "/info", headers=dict(instance.headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            info = json.loads(response.read())
    except (OSError, ValueError):
        return {}
    dtype = info.get("model_dtype") if isinstance(info, dict) else None
    return {"dtype": dtype.lower()} if isinstance(dtype, str) and dtype else {}


def _started(target: TrialTarget, settings: Settings, result: TrialResult, began: float) -> TrialInstance | None:
    """Start the instance, or record why it could not start."""
    try:
        instance = target.start(settings)
    except StartFailed as exc:
        result.infeasible = f"{exc.reason} at start: {exc.detail}".strip().rstrip(":")
        result.seconds = result.start_seconds = time.monotonic() - began
        return None
    result.start_seconds = time.monotonic() - began
    result.reported = reported_settings(instance)
    return instance


def run_trial(target: TrialTarget, settings: Settings, workload: Workload, *, slo_p99_ms: float,
              schedule: Schedule | None = None) -> TrialResult:
    """Start an instance with ``settings``, measure it, stop it. Never raises for a failing setting."""
    schedule = schedule or Schedule()
    began = time.monotonic()
    result = TrialResult(settings=dict(settings))
    instance = _started(target, settings, result, began)
    if instance is None:
        return result
    try:
        asyncio.run(drive(instance, workload, settings, slo_p99_ms=slo_p99_ms, schedule=schedule, result=result))
        result.peak_memory_bytes = instance.peak_memory_bytes()
    finally:
        instance.stop()
    result.seconds = time.monotonic() - began
    return result


async def hold(instance: TrialInstance, workload: Workload, settings: Settings, *, concurrency: int,
               slo_p99_ms: float, schedule: Schedule, result: TrialResult) -> None:
    """One long step at ``concurrency``; if it misses the SLO, one more a level lower (the trial's
    best level may have met the SLO by luck). Sets ``result.infeasible`` on a storm or a death."""
    batch = client_batch(settings, workload)
    levels = [concurrency, concurrency // 2] if concurrency > 1 else [concurrency]
    for i, level in enumerate(levels):
        raw = await run_step(
            instance.base_url, workload.path, lambda n: workload.body(n, batch), concurrency=level,
            seconds=schedule.confirm_seconds, warmup=schedule.warmup_seconds, timeout=schedule.request_timeout,
            offset=50_021 * (i + 1), headers=instance.headers,
        )
        step = _record(instance, raw, level, slo_p99_ms, result)
        if step is None or step.meets_slo:
            return


def _record(instance: TrialInstance, raw: StepResult, concurrency: int, slo_p99_ms: float,
            result: TrialResult) -> Step | None:
    """Add one measured step to ``result``; None (with ``result.infeasible`` set) when the instance
    died during it or answered it with a storm of server errors and broken connections."""
    ended = instance.exited()
    if ended is not None:
        result.infeasible = f"{ended.reason} at concurrency {concurrency}: {ended.detail}".strip()
        return None
    step = to_step(raw, slo_p99_ms)
    result.steps.append(step)
    total = raw.requests + raw.errors
    if total and (raw.server_errors + raw.transport_errors) / total >= STORM_RATE:
        result.infeasible = (f"{raw.server_errors} server errors and {raw.transport_errors} broken connections "
                             f"in {total} requests at concurrency {concurrency}")
        return None
    return step


def run_confirmation(target: TrialTarget, settings: Settings, workload: Workload, *,
                     concurrency: int, slo_p99_ms: float, schedule: Schedule | None = None) -> TrialResult:
    """Measure ``settings`` again on a fresh instance, one long step at ``concurrency`` (see `hold`).
    Its ``throughput`` is the figure the confirmation round uses; never raises for a failing setting."""
    schedule = schedule or Schedule()
    began = time.monotonic()
    result = TrialResult(settings=dict(settings))
    instance = _started(target, settings, result, began)
    if instance is None:
        return result
    try:
        asyncio.run(hold(instance, workload, settings, concurrency=concurrency, slo_p99_ms=slo_p99_ms,
                         schedule=schedule, result=result))
        result.peak_memory_bytes = instance.peak_memory_bytes()
    finally:
        instance.stop()
    result.seconds = time.monotonic() - began
    return result
