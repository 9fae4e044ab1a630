"""Model tests download from a stand-in hub on loopback (tests/fixtures/hub_standin.py), never a real one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.tiny_models import build_tiny_embedder


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the stand-in serves: acme/tiny-embedder, a tiny random-weight XLM-R embedder."""
    root = tmp_path_factory.mktemp("hub")
    build_tiny_embedder(root / "acme" / "tiny-embedder")
    return root


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets HF_HUB_OFFLINE=1 so nothing reaches a real hub; downloads here go to loopback."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
