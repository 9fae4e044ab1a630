"""Fixtures of the dashboard tests: a private state directory, a profiles directory, host facts.

Nothing in these tests fakes an engine: the process backend is real (its records live in a
temporary `TEI_MANAGER_STATE_DIR`), the fallback worker is real and so is the gateway's metrics
page.  The one invented thing is a GPU: `probe_host` (the one function the dashboard and
`tei-manager apply` read host facts from) is replaced where a test needs stable facts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import cpu_host, gpu_host

from tei_manager import probe


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Process records and logs of this test only; `tei-manager` reads the same variable."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(path))
    return path


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    path = tmp_path / "profiles"
    path.mkdir()
    return path


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host facts of a machine without an NVIDIA driver, frozen so that frames are stable."""
    monkeypatch.setattr(probe, "probe_host", lambda *args, **kwargs: cpu_host())


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host facts with two GPUs.  Injected: no GPU can exist on the test host."""
    monkeypatch.setattr(probe, "probe_host", lambda *args, **kwargs: gpu_host())
