"""Fixtures of the dashboard tests: a private state directory and a profiles directory.

Nothing in these tests fakes an engine: the process backend is real (its records live in a
temporary `TEI_MANAGER_STATE_DIR`), the fallback worker is real and so is the gateway's metrics
page.  The one invented thing is a GPU (see tui_helpers.gpu_host).
"""

from __future__ import annotations

from pathlib import Path

import pytest


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
