"""Fixtures for the tune suite: tiny real models and the packaged MiniLM, served by real worker processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/fixtures is shared by several suites; make it importable however pytest was started.
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fixtures.tiny_models import build_tiny_embedder, build_tiny_reranker, minilm_path  # noqa: E402


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(build_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder")))


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(build_tiny_reranker(tmp_path_factory.mktemp("tiny-reranker")))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return Path(minilm_path())


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration records go to a temporary state directory, never the user's."""
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path / "state"))
