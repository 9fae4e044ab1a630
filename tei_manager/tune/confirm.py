"""The confirmation round: the leading settings measured again, longer, in turn; decided on the median.

One trial is one short step per concurrency level, and on a busy or flat landscape (a small model
on a CPU: most settings within 20% of each other) its figure is noisy. The best of many noisy
figures is biased upward (the winner's curse), so neither the search's choice nor a full grid's
best is trusted on its single trial. Instead the leading settings (the search's, the profile's
current one for the gain, and the grid's top few when it was measured) are each started again
``rounds`` times, one long step at the concurrency their trial found best, in turn (A, B, C, A, B,
C: a slow drift of the machine hits every setting alike), and compared on the median of those
figures. Pure: the runner passes the measuring function.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .search import Value
from .trial import TrialResult

#: A setting's identity across trials (its settings, sorted).
SettingsKey = tuple[tuple[str, Value], ...]


def settings_key(settings: Mapping[str, Value]) -> SettingsKey:
    return tuple(sorted(settings.items()))


@dataclass(frozen=True)
class Confirmed:
    """A setting's confirmation figures (inputs/s at the SLO, one per re-measurement)."""

    figures: tuple[float, ...]
    seconds_each: float

    @property
    def median(self) -> float:
        return statistics.median(self.figures)

    @property
    def low(self) -> float:
        return min(self.figures)

    @property
    def high(self) -> float:
        return max(self.figures)

    @property
    def spread(self) -> float:
        """(high - low) / median: how far apart the re-measurements landed (0.1 = 10%)."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0

    def describe(self) -> str:
        return (f"{self.median:,.1f} inputs/s (median of {len(self.figures)} x {self.seconds_each:g} s, "
                f"{self.low:,.1f}-{self.high:,.1f})")

    def to_json(self) -> dict[str, object]:
        return {"median": round(self.median, 2), "low": round(self.low, 2), "high": round(self.high, 2),
                "spread": round(self.spread, 4), "figures": [round(f, 2) for f in self.figures],
                "seconds_each": self.seconds_each}


def leaders(trials: Sequence[TrialResult], n: int) -> list[TrialResult]:
    """The ``n`` trials with the highest throughput at the SLO (those that met it), best first."""
    passing = [t for t in trials if t.meets_slo]
    return sorted(passing, key=lambda t: -t.throughput)[:n]


def run_round(candidates: Sequence[TrialResult], measure: Callable[[TrialResult], TrialResult], *, rounds: int,
              may_continue: Callable[[], bool]) -> dict[SettingsKey, list[TrialResult]]:
    """Re-measure each distinct candidate ``rounds`` times, in turn; stop early when told to."""
    distinct = list({settings_key(c.settings): c for c in candidates if c.meets_slo}.values())
    out: dict[SettingsKey, list[TrialResult]] = {}
    for _ in range(rounds):
        for candidate in distinct:
            if not may_continue():
                return out
            out.setdefault(settings_key(candidate.settings), []).append(measure(candidate))
    return out
