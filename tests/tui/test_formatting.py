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


def test_fingerprint_column_shows_age_and_the_last_accepted_drift() -> None:
    assert fmt.fingerprint(None) == "–"  # nothing recorded yet
    assert fmt.fingerprint(3 * 3600 + 7 * 60) == "3h07m"
    assert fmt.fingerprint(45, "cosine", 0.05251) == "45s · cos 0.0525"
    assert fmt.fingerprint(2 * 86400, "score delta", 0.4) == "2d00h · Δ 0.4000"


def test_pull_progress_rows() -> None:
    from tei_manager.models.store import FileProgress
    from tei_manager.tui.services import describe_pull

    assert describe_pull(FileProgress("tiny", "", 0, None)) is None  # a model-level event: no row
    half = describe_pull(FileProgress("tiny", "model.safetensors", 3 * 2**20, 6 * 2**20))
    assert half is not None and half.key == "tiny/model.safetensors" and half.progress == "50%  3 MiB/6 MiB"
    done = describe_pull(FileProgress("tiny", "config.json", 670, 670))
    assert done is not None and done.finished and done.progress == "done  0.7 KiB"
