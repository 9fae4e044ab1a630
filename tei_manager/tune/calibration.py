"""Measured peak memory per (model, runtime, dtype, max-batch-tokens, device): the VRAM model's calibration.

`tune` records the peak memory of every trial that ran; the planner asks `memory_for()` and gets
the measured figure where one exists and its own estimate where not, with a `source` saying which,
so `plan` can show it. The store is one JSON file in the state directory, shared by all profiles
(a model's footprint does not depend on the profile that measured it).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tei_manager.errors import TeiManagerError
from tei_manager.state import state_root

FILE_NAME = "calibration.json"
VERSION = 1


class CalibrationError(TeiManagerError):
    """The calibration file exists but cannot be read."""


@dataclass(frozen=True)
class Measurement:
    model: str  # the model's id (hub id or path), as the profile names it
    runtime: str  # tei | fallback
    dtype: str
    max_batch_tokens: int
    device: str  # "cpu" or the GPU's name: a footprint measured on one card holds for that card
    peak_bytes: int
    measured_at: str  # ISO 8601, UTC

    @property
    def key(self) -> tuple[str, str, str, int, str]:
        return (self.model, self.runtime, self.dtype, self.max_batch_tokens, self.device)


@dataclass(frozen=True)
class MemoryFigure:
    bytes: int
    source: Literal["measured", "estimated"]
    measured_at: str | None = None


def default_path() -> Path:
    return state_root() / FILE_NAME


def load(path: Path | None = None) -> list[Measurement]:
    """Every stored measurement; none when the file does not exist yet."""
    p = path or default_path()
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read the calibration store ({exc})", where=str(p),
                               fix="delete the file; the next tune measures again") from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION or not isinstance(raw.get("measurements"), list):
        raise CalibrationError(f"not a version {VERSION} calibration store", where=str(p),
                               fix="delete the file; the next tune measures again")
    try:
        return [Measurement(**m) for m in raw["measurements"]]
    except TypeError as exc:
        raise CalibrationError(f"a measurement has the wrong fields ({exc})", where=str(p),
                               fix="delete the file; the next tune measures again") from None


def record(new: Iterable[Measurement], path: Path | None = None) -> Path:
    """Add measurements, replacing older ones with the same key; written atomically (temp file + rename)."""
    p = path or default_path()
    by_key = {m.key: m for m in load(p)}
    by_key.update({m.key: m for m in new})
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = {"version": VERSION, "measurements": [asdict(m) for m in sorted(by_key.values(), key=lambda m: m.key)]}
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".calibration.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def lookup(measurements: Iterable[Measurement], *, model: str, runtime: str, dtype: str, max_batch_tokens: int,
           device: str) -> Measurement | None:
    """The measurement for exactly this model, runtime, dtype, batch budget and device, if any. Pure."""
    key = (model, runtime, dtype, max_batch_tokens, device)
    found = [m for m in measurements if m.key == key]
    return max(found, key=lambda m: m.measured_at) if found else None


def memory_for(measurements: Iterable[Measurement], *, model: str, runtime: str, dtype: str,
               max_batch_tokens: int, device: str, estimate: Callable[[], int]) -> MemoryFigure:
    """Measured where it exists, estimated where not. Pure (``estimate`` is only called when needed)."""
    m = lookup(measurements, model=model, runtime=runtime, dtype=dtype, max_batch_tokens=max_batch_tokens,
               device=device)
    if m is not None:
        return MemoryFigure(m.peak_bytes, "measured", m.measured_at)
    return MemoryFigure(estimate(), "estimated")
