"""`run_tune`: measure the current setting, search the space, pick the best, record the peaks.

For each deployment, within its share of the time budget:

1. the profile's current setting is measured first, as it is (its own permits, the runtime's
   defaults for anything it does not set), so the result can say what tuning gained;
2. the search (`search.coordinate_search`) starts from the grid point nearest to it, each point a
   trial (`trial.run_trial`) on a fresh temporary instance from the deployment's `TrialTarget`;
3. optionally the full grid is measured too, in the same run, reusing points already measured,
   so the search's choice can be compared with the true best of the space;
4. the chosen setting is the highest throughput at the SLO (ties: less memory), with the
   recommended ``max_concurrent_requests`` derived from the inputs in flight at the SLO;
5. every trial's peak memory goes to the calibration store.

Co-located deployments (given the device's memory) are then chosen together so that their
peaks fit at once, and the result says how much headroom is left.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import calibration
from .search import (
    Candidate,
    Colocation,
    Point,
    SearchResult,
    Space,
    Value,
    choose_colocated,
    coordinate_search,
    full_grid,
    recommended_max_concurrent,
)
from .target import TrialTarget
from .trial import Schedule, TrialResult, client_batch, run_trial
from .workload import Workload


@dataclass(frozen=True)
class TuneRequest:
    """One deployment to tune. ``current`` holds the profile's concrete values (``auto`` resolved)."""

    deployment: str
    model: str
    runtime: str  # tei | fallback
    workload: Workload
    space: Space
    current: Mapping[str, Value]
    default_dtype: str  # what the runtime runs at when the settings name no dtype
    slo_p99_ms: float
    schedule: Schedule = field(default_factory=Schedule)


class Progress(Protocol):
    """Told about each trial as it starts and ends (a rich progress bar, the TUI, or nothing)."""

    def trial_started(self, deployment: str, phase: str, settings: Mapping[str, Value]) -> None: ...

    def trial_finished(self, deployment: str, phase: str, result: TrialResult) -> None: ...


class NoProgress:
    def trial_started(self, deployment: str, phase: str, settings: Mapping[str, Value]) -> None:
        pass

    def trial_finished(self, deployment: str, phase: str, result: TrialResult) -> None:
        pass


@dataclass
class DeploymentResult:
    request: TuneRequest
    device: str
    current: TrialResult
    search: list[TrialResult] = field(default_factory=list)  # in the order they ran
    grid: list[TrialResult] | None = None  # the full grid, when asked for
    search_stopped_early: bool = False
    seconds: float = 0.0
    chosen_override: TrialResult | None = None  # set by co-location when the best alone does not fit

    @property
    def candidates(self) -> list[TrialResult]:
        """Every measured setting that met the SLO, the current one included: when nothing the search
        found beats it, keeping it is the recommendation (never a slower setting than today's)."""
        return [t for t in [*self.search, self.current] if t.meets_slo]

    @property
    def best_alone(self) -> TrialResult | None:
        passing = self.candidates
        if not passing:
            return None
        return max(passing, key=lambda t: (t.throughput, -(t.peak_memory_bytes or 0)))

    @property
    def search_best(self) -> TrialResult | None:
        """The best setting the search found (the current one left out): what is compared with the grid."""
        passing = [t for t in self.search if t.meets_slo]
        return max(passing, key=lambda t: (t.throughput, -(t.peak_memory_bytes or 0))) if passing else None

    @property
    def chosen(self) -> TrialResult | None:
        return self.chosen_override or self.best_alone

    @property
    def grid_best(self) -> TrialResult | None:
        passing = [t for t in self.grid or [] if t.meets_slo]
        return max(passing, key=lambda t: t.throughput) if passing else None

    @property
    def gain(self) -> float | None:
        """Throughput at the SLO of the chosen setting over the current one (0.3 = +30%); None when
        the current setting does not meet the SLO at all (any working setting is then a gain)."""
        chosen = self.chosen
        if chosen is None or not self.current.meets_slo or self.current.throughput <= 0:
            return None
        return chosen.throughput / self.current.throughput - 1

    @property
    def recommended(self) -> dict[str, Value] | None:
        """The values to write into the profile's ``tuning:``."""
        chosen = self.chosen
        if chosen is None or chosen.best is None:
            return None
        out = dict(chosen.settings)
        out["max_concurrent_requests"] = recommended_max_concurrent(
            chosen.best.concurrency, client_batch(chosen.settings, self.request.workload))
        return out


@dataclass
class TuneResult:
    deployments: list[DeploymentResult]
    slo_p99_ms: float
    budget_seconds: float
    seconds: float
    colocation: Colocation | None = None
    capacity_bytes: int | None = None
    calibration_path: Path | None = None


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """``90s``, ``10m``, ``1h`` or ``1h30m`` (a bare number is seconds) -> seconds, for `--budget`."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise ValueError(f"cannot read the budget {text!r}; write it like 90s, 10m or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"the budget {text!r} must be more than zero")
    return seconds


class _Clock:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def trial_settings(space: Space, point: Point, workload: Workload, schedule: Schedule) -> dict[str, Value]:
    """A point's settings plus enough permits that the trial measures latency, not 429s."""
    settings = space.settings(point)
    settings.setdefault("max_concurrent_requests", schedule.max_concurrency * client_batch(settings, workload))
    return settings


def tune_deployment(request: TuneRequest, target: TrialTarget, budget_seconds: float, *,
                    compare_full_grid: bool = False, grid_budget_seconds: float | None = None,
                    progress: Progress | None = None) -> DeploymentResult:
    """Tune one deployment (see the module docstring). The current setting is always measured."""
    progress = progress or NoProgress()
    began = time.monotonic()
    clock = _Clock(budget_seconds)
    durations: list[float] = []

    def measure(settings: Mapping[str, Value], phase: str) -> TrialResult:
        progress.trial_started(request.deployment, phase, settings)
        result = run_trial(target, settings, request.workload, slo_p99_ms=request.slo_p99_ms,
                           schedule=request.schedule)
        durations.append(result.seconds)
        progress.trial_finished(request.deployment, phase, result)
        return result

    def room(c: _Clock) -> Callable[[], bool]:
        # Start another trial only if one as long as the slowest so far still fits the budget.
        return lambda: c.left() >= (max(durations) if durations else 0.0)

    current = measure(request.current, "current")
    out = DeploymentResult(request=request, device=target.device, current=current)
    by_point: dict[Point, TrialResult] = {}

    def objective(point: Point) -> float:
        result = measure(trial_settings(request.space, point, request.workload, request.schedule), "search")
        by_point[point] = result
        out.search.append(result)
        return result.throughput

    searched: SearchResult = coordinate_search(
        request.space, objective, start=request.space.nearest(request.current), may_continue=room(clock))
    out.search_stopped_early = searched.stopped_early
    if compare_full_grid:
        grid_clock = _Clock(grid_budget_seconds if grid_budget_seconds is not None else float("inf"))

        def grid_objective(point: Point) -> float:
            if point not in by_point:
                by_point[point] = measure(
                    trial_settings(request.space, point, request.workload, request.schedule), "grid")
            return by_point[point].throughput

        grid = full_grid(request.space, grid_objective, may_continue=room(grid_clock))
        out.grid = [by_point[p] for p in grid.scores]
    out.seconds = time.monotonic() - began
    return out


def calibration_records(result: DeploymentResult) -> list[calibration.Measurement]:
    """The largest peak per (dtype, max-batch-tokens) among the trials that ran to the end."""
    peaks: dict[tuple[str, int], int] = {}
    for trial in [result.current, *result.search, *(result.grid or [])]:
        tokens = trial.settings.get("max_batch_tokens")
        if trial.peak_memory_bytes is None or not isinstance(tokens, int) or not trial.feasible:
            continue
        dtype = str(trial.settings.get("dtype", result.request.default_dtype))
        key = (dtype, tokens)
        peaks[key] = max(peaks.get(key, 0), trial.peak_memory_bytes)
    at = calibration.now_iso()
    return [
        calibration.Measurement(result.request.model, result.request.runtime, dtype, tokens, result.device, peak, at)
        for (dtype, tokens), peak in sorted(peaks.items())
    ]


def colocate(results: list[DeploymentResult], capacity_bytes: int) -> Colocation | None:
    """Choose one measured setting per deployment so that all peaks fit ``capacity_bytes`` at once."""
    pools = {
        r.request.deployment: [
            Candidate(t.settings, t.throughput, t.peak_memory_bytes) for t in r.candidates
            if t.peak_memory_bytes is not None
        ]
        for r in results
    }
    choice = choose_colocated(pools, capacity_bytes)
    if choice is None:
        return None
    for r in results:
        picked = choice.choice[r.request.deployment]
        r.chosen_override = next(t for t in r.candidates if t.settings == picked.settings)
    return choice


def run_tune(requests: list[TuneRequest], target_for: Callable[[TuneRequest], TrialTarget], *,
             budget_seconds: float, compare_full_grid: bool = False, grid_budget_seconds: float | None = None,
             capacity_bytes: int | None = None, progress: Progress | None = None,
             calibration_path: Path | None = None, record_calibration: bool = True) -> TuneResult:
    """Tune ``requests`` one after the other, each with an equal share of what is left of the budget.

    ``capacity_bytes`` (the device's memory) makes the deployments co-located: their chosen
    settings must fit it together. Peaks are recorded in the calibration store unless told not to.
    """
    began = time.monotonic()
    clock = _Clock(budget_seconds)
    results: list[DeploymentResult] = []
    for i, request in enumerate(requests):
        share = max(0.0, clock.left()) / (len(requests) - i)
        results.append(tune_deployment(request, target_for(request), share, compare_full_grid=compare_full_grid,
                                       grid_budget_seconds=grid_budget_seconds, progress=progress))
    colocation = colocate(results, capacity_bytes) if capacity_bytes is not None and len(results) > 0 else None
    stored: Path | None = None
    if record_calibration:
        records = [m for r in results for m in calibration_records(r)]
        if records:
            stored = calibration.record(records, calibration_path)
    return TuneResult(results, slo_p99_ms=requests[0].slo_p99_ms if requests else 0.0,
                      budget_seconds=budget_seconds, seconds=time.monotonic() - began, colocation=colocation,
                      capacity_bytes=capacity_bytes, calibration_path=stored)
