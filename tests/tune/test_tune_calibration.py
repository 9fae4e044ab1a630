"""The calibration store: measured peaks in the state directory, looked up before the estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from tei_manager.tune import calibration
from tei_manager.tune.calibration import CalibrationError, Measurement, memory_for

MiB = 1 << 20


def _m(tokens: int, peak_mib: int, at: str = "2026-11-30T10:00:00Z", device: str = "NVIDIA L20") -> Measurement:
    return Measurement("BAAI/bge-m3", "tei", "float16", tokens, device, peak_mib * MiB, at)


def test_measured_where_it_exists_estimated_where_not() -> None:
    store = [_m(16384, 5200), _m(8192, 3900)]
    asked: list[int] = []

    def estimate() -> int:
        asked.append(1)
        return 6000 * MiB

    hit = memory_for(store, model="BAAI/bge-m3", runtime="tei", dtype="float16", max_batch_tokens=16384,
                     device="NVIDIA L20", estimate=estimate)
    assert (hit.bytes, hit.source, hit.measured_at) == (5200 * MiB, "measured", "2026-11-30T10:00:00Z")
    assert not asked, "the estimate is not computed when a measurement exists"
    for other in ({"max_batch_tokens": 32768}, {"dtype": "float32"}, {"device": "NVIDIA A10"}, {"runtime": "fallback"}):
        query = {"model": "BAAI/bge-m3", "runtime": "tei", "dtype": "float16", "max_batch_tokens": 16384,
                 "device": "NVIDIA L20", **other}
        miss = memory_for(store, estimate=estimate, **query)  # type: ignore[arg-type]
        assert (miss.bytes, miss.source) == (6000 * MiB, "estimated")


def test_the_newest_measurement_wins() -> None:
    store = [_m(8192, 3900, "2026-11-01T00:00:00Z"), _m(8192, 4100, "2026-11-30T00:00:00Z")]
    found = calibration.lookup(store, model="BAAI/bge-m3", runtime="tei", dtype="float16", max_batch_tokens=8192,
                               device="NVIDIA L20")
    assert found is not None and found.peak_bytes == 4100 * MiB


def test_records_go_to_the_state_directory_and_replace_same_keys(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path / "state"))
    assert calibration.load() == []
    path = calibration.record([_m(8192, 3900), _m(16384, 5200)])
    assert path == tmp_path / "state" / "calibration.json"
    calibration.record([_m(8192, 4000, "2026-12-01T00:00:00Z"), _m(4096, 3000, device="cpu")])
    stored = {(m.max_batch_tokens, m.device): m.peak_bytes // MiB for m in calibration.load()}
    assert stored == {(8192, "NVIDIA L20"): 4000, (16384, "NVIDIA L20"): 5200, (4096, "cpu"): 3000}
    assert not list(path.parent.glob(".calibration.*")), "no temp file is left behind"


def test_a_damaged_store_says_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="cannot read the calibration store") as err:
        calibration.load(path)
    assert err.value.fix and "delete the file" in err.value.fix
    path.write_text('{"version": 99, "measurements": []}')
    with pytest.raises(CalibrationError, match="not a version 1"):
        calibration.load(path)
    path.write_text('{"version": 1, "measurements": [{"model": "m"}]}')
    with pytest.raises(CalibrationError, match="wrong fields"):
        calibration.load(path)
