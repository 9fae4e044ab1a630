"""The confirmation round's order and figures, with fabricated trials (pure: no processes)."""

from __future__ import annotations

from tei_manager.tune.confirm import Confirmed, leaders, run_round, settings_key
from tei_manager.tune.trial import Step, TrialResult


def _trial(tokens: int, throughput: float, *, meets_slo: bool = True) -> TrialResult:
    return TrialResult({"max_batch_tokens": tokens}, [Step(2, throughput, 50, 90, 100, 0, 0, meets_slo)], 1 << 30)


def test_each_leader_is_measured_again_in_turn_and_settings_only_once() -> None:
    a, b, c = _trial(512, 70), _trial(1024, 65), _trial(2048, 60)
    missed = _trial(4096, 0, meets_slo=False)
    order: list[int] = []

    def measure(trial: TrialResult) -> TrialResult:
        order.append(int(trial.settings["max_batch_tokens"]))
        return _trial(int(trial.settings["max_batch_tokens"]), trial.throughput - 5)

    # b appears twice (the search's leader and one of the grid's top three): measured as one setting.
    again = run_round([a, b, missed, c, b], measure, rounds=2, may_continue=lambda: True)
    assert order == [512, 1024, 2048, 512, 1024, 2048]  # A B C, A B C; never a setting that missed the SLO
    assert [t.throughput for t in again[settings_key(a.settings)]] == [65, 65]


def test_the_round_stops_when_the_budget_says_so() -> None:
    left = iter([True, True, True, False])
    again = run_round([_trial(512, 70), _trial(1024, 65)], lambda t: t, rounds=3, may_continue=lambda: next(left))
    assert sum(len(v) for v in again.values()) == 3


def test_leaders_and_the_confirmed_figure() -> None:
    trials = [_trial(512, 60), _trial(1024, 75), _trial(2048, 0, meets_slo=False), _trial(4096, 70)]
    assert [t.settings["max_batch_tokens"] for t in leaders(trials, 2)] == [1024, 4096]
    figures = Confirmed((62.0, 70.0, 66.0), 6.0)
    assert figures.median == 66 and (figures.low, figures.high) == (62, 70)
    assert round(figures.spread, 4) == round(8 / 66, 4)
    assert figures.describe() == "66.0 inputs/s (median of 3 x 6 s, 62.0-70.0)"
    assert Confirmed((0.0, 0.0), 6.0).spread == 0
