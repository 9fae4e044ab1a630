"""`run_tune`: measure the current setting, search the space, confirm the leaders, pick the best,
record the peaks.

For each deployment, within its share of the time budget:

1. the profile's current setting is measured first, as it is (its own permits, the runtime's
   defaults for anything it does not set), so the result can say what tuning gained; when it lies
   outside the searched space (say the runtime's default dtype is not the one searched) the
   result says so (`DeploymentResult.current_outside_space`);
2. the search (`search.coordinate_search`) starts from the grid point nearest to it, each point a
   trial (`trial.run_trial`) on a fresh temporary instance from the deployment's `TrialTarget`,
   at most a third of the grid's trials less those the confirmation round needs, and stopping
   early enough to leave the confirmation round its time;
3. optionally the full grid is measured too, in the same run, reusing points already measured,
   so the search's choice can be compared with the best of the space;
4. the confirmation round (`confirm`): the search's leaders, the current setting and (with the
   grid) the grid's top few are measured again, longer, in turn;
5. the chosen setting is the highest confirmed (median) throughput at the SLO (ties: less
   memory), with the recommended ``max_concurrent_requests`` derived from the inputs in flight
   at the SLO; settings that were not confirmed are chosen on their trial only when nothing was;
6. every trial's peak memory goes to the calibration store.

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

from . import calibration, confirm
from .confirm import Confirmed, SettingsKey, settings_key
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
    outside_space,
    recommended_max_concurrent,
    search_cap,
)
from .target import TrialTarget
from .trial import Schedule, TrialResult, client_batch, run_confirmation, run_trial
from .workload import Workload

#: How many of the grid's best settings the confirmation round re-measures (with `--full-grid`).
GRID_LEADERS = 3


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
    search_stopped_early: bool = False  # by the time budget
    search_capped: bool = False  # at the trial cap (a third of the grid, less the confirmations)
    seconds: float = 0.0
    chosen_override: TrialResult | None = None  # set by co-location when the best alone does not fit
    confirmations: dict[SettingsKey, list[TrialResult]] = field(default_factory=dict)  # settings -> re-measurements

    def confirmed(self, trial: TrialResult) -> Confirmed | None:
        """The trial's confirmation figures, when the confirmation round re-measured its settings."""
        again = self.confirmations.get(settings_key(trial.settings))
        if not again:
            return None
        return Confirmed(tuple(t.throughput for t in again), self.request.schedule.confirm_seconds)

    def score(self, trial: TrialResult) -> float:
        """What settings are compared on: the confirmed median, else the trial's own figure."""
        confirmed = self.confirmed(trial)
        return confirmed.median if confirmed is not None else trial.throughput

    def _best(self, trials: list[TrialResult]) -> TrialResult | None:
        """The best of ``trials`` that met the SLO, among the confirmed ones when any was confirmed
        (a confirmed median and a single short trial are not the same kind of figure)."""
        passing = [t for t in trials if t.meets_slo]
        confirmed = [t for t in passing if self.confirmed(t) is not None]
        pool = confirmed or passing
        return max(pool, key=lambda t: (self.score(t), -(t.peak_memory_bytes or 0))) if pool else None

    @property
    def candidates(self) -> list[TrialResult]:
        """Every measured setting that met the SLO, the current one included: when nothing the search
        found beats it, keeping it is the recommendation (never a slower setting than today's)."""
        return [t for t in [*self.search, self.current] if t.meets_slo]

    @property
    def best_alone(self) -> TrialResult | None:
        return self._best(self.candidates)

    @property
    def search_best(self) -> TrialResult | None:
        """The best setting the search found (the current one left out): what is compared with the grid."""
        return self._best(self.search)

    @property
    def chosen(self) -> TrialResult | None:
        return self.chosen_override or self.best_alone

    @property
    def grid_best(self) -> TrialResult | None:
        return self._best(self.grid or [])

    @property
    def search_vs_grid(self) -> float | None:
        """The search's best over the grid's best, on the same kind of figure (confirmed when both are)."""
        search, grid = self.search_best, self.grid_best
        if search is None or grid is None or self.score(grid) <= 0:
            return None
        return self.score(search) / self.score(grid)

    @property
    def gain(self) -> float | None:
        """Throughput at the SLO of the chosen setting over the current one (0.3 = +30%); None when
        the current setting does not meet the SLO at all (any working setting is then a gain)."""
        chosen = self.chosen
        if chosen is None or not self.current.meets_slo or self.score(self.current) <= 0:
            return None
        return self.score(chosen) / self.score(self.current) - 1

    @property
    def confirmation_trials(self) -> int:
        return sum(len(v) for v in self.confirmations.values())

    @property
    def search_confirmations(self) -> int:
        """Re-measurements of settings the search measured (what counts, with the search's own
        trials, against a third of the grid)."""
        keys = {settings_key(t.settings) for t in self.search}
        return sum(len(v) for k, v in self.confirmations.items() if k in keys)

    @property
    def current_outside_space(self) -> list[str]:
        """How the current setting, as the instance ran it, lies outside the searched space (empty:
        inside, or not known): the gain is then against a setting the grid has no point for."""
        runs_at = {**self.current.reported, **self.request.current}
        return outside_space(self.request.space, runs_at)

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
    schedule = request.schedule
    began = time.monotonic()
    clock = _Clock(budget_seconds)
    trials: list[TrialResult] = []

    def measure(settings: Mapping[str, Value], phase: str) -> TrialResult:
        progress.trial_started(request.deployment, phase, settings)
        result = run_trial(target, settings, request.workload, slo_p99_ms=request.slo_p99_ms, schedule=schedule)
        trials.append(result)
        progress.trial_finished(request.deployment, phase, result)
        return result

    def reconfirm(trial: TrialResult) -> TrialResult:
        progress.trial_started(request.deployment, "confirm", trial.settings)
        level = trial.best.concurrency if trial.best else 1  # only settings that met the SLO come here
        result = run_confirmation(target, trial.settings, request.workload, concurrency=level,
                                  slo_p99_ms=request.slo_p99_ms, schedule=schedule)
        progress.trial_finished(request.deployment, "confirm", result)
        return result

    def confirmation_seconds() -> float:
        # A start as slow as the slowest so far, then up to two long steps (see trial.hold).
        start = max((t.start_seconds for t in trials), default=0.0)
        return start + 2 * (schedule.warmup_seconds + schedule.confirm_seconds)

    per_setting = schedule.confirmations_per_setting
    # The search's leaders and the current setting are confirmed within the budget: keep their time.
    reserved = (schedule.confirm_leaders + 1) * per_setting

    def room(c: _Clock, keep: int = 0) -> Callable[[], bool]:
        # Start another trial only if one as long as the slowest so far (and ``keep`` confirmations)
        # still fits the budget.
        return lambda: c.left() >= max((t.seconds for t in trials), default=0.0) + keep * confirmation_seconds()

    current = measure(request.current, "current")
    out = DeploymentResult(request=request, device=target.device, current=current)
    by_point: dict[Point, TrialResult] = {}

    def objective(point: Point) -> float:
        result = measure(trial_settings(request.space, point, request.workload, schedule), "search")
        by_point[point] = result
        out.search.append(result)
        return result.throughput

    searched: SearchResult = coordinate_search(
        request.space, objective, start=request.space.nearest(request.current), may_continue=room(clock, reserved),
        max_trials=search_cap(request.space, schedule.confirm_leaders * per_setting))
    out.search_stopped_early, out.search_capped = searched.stopped_early, searched.capped
    leading = [current, *confirm.leaders(out.search, schedule.confirm_leaders)]
    confirm_clock = clock
    if compare_full_grid:
        confirm_clock = _Clock(grid_budget_seconds if grid_budget_seconds is not None else float("inf"))

        def grid_objective(point: Point) -> float:
            if point not in by_point:
                by_point[point] = measure(trial_settings(request.space, point, request.workload, schedule), "grid")
            return by_point[point].throughput

        grid = full_grid(request.space, grid_objective, may_continue=room(confirm_clock))
        out.grid = [by_point[p] for p in grid.scores]
        leading += confirm.leaders(out.grid, GRID_LEADERS)
    if per_setting:
        out.confirmations = confirm.run_round(
            leading, reconfirm, rounds=per_setting,
            may_continue=lambda: confirm_clock.left() >= confirmation_seconds())
    out.seconds = time.monotonic() - began
    return out


def calibration_records(result: DeploymentResult) -> list[calibration.Measurement]:
    """The largest peak per (dtype, max-batch-tokens) among the trials that ran to the end."""
    peaks: dict[tuple[str, int], int] = {}
    again = [t for ts in result.confirmations.values() for t in ts]
    for trial in [result.current, *result.search, *(result.grid or []), *again]:
        tokens = trial.settings.get("max_batch_tokens")
        if trial.peak_memory_bytes is None or not isinstance(tokens, int) or not trial.feasible:
            continue
        # The dtype the instance said it ran at beats the planner's idea of the runtime's default.
        dtype = str(trial.settings.get("dtype") or trial.reported.get("dtype") or result.request.default_dtype)
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
            Candidate(t.settings, r.score(t), t.peak_memory_bytes) for t in r.candidates
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
