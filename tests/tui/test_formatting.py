"""Numbers as the dashboard prints them: short, and "–" when unknown rather than a fake zero."""

from __future__ import annotations

import pytest

from tei_manager.tui import formatting as fmt


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "–"), (0, "0s"), (59, "59s"), (61, "1m01s"), (3 * 3600 + 7 * 60, "3h07m"), (2 * 86400 + 3600, "2d01h"),
])
def test_duration(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize(("used", "total", "text"), [
    (None, 46068, "–/45.0 GiB"), (360, 15360, "360 MiB/15.0 GiB"), (16000, 46068, "15.6/45.0 GiB"),
    (812, 1000, "812/1000 MiB"),
])
def test_used_of(used: int | None, total: int, text: str) -> None:
    assert fmt.used_of(used, total) == text


def test_bar_is_never_empty_when_something_is_used() -> None:
    assert fmt.bar(0.001, 10).count("█") == 1
    assert fmt.bar(1.5, 10).count("█") == 10
    assert "█" not in fmt.bar(None, 10)


@pytest.mark.parametrize(("fraction", "variable"), [(None, "$success"), (0.5, "$success"), (0.8, "$warning"),
                                                    (0.95, "$error")])
def test_level(fraction: float | None, variable: str) -> None:
    assert fmt.level(fraction) == variable


def test_rates_and_latencies() -> None:
    assert (fmt.rate(None), fmt.rate(3.14159), fmt.rate(1234.5)) == ("–", "3.1", "1234")
    assert (fmt.millis(None), fmt.millis(0.0184), fmt.millis(2.5)) == ("–", "18ms", "2.5s")
