"""Session fixtures: real models, real fallback workers on loopback, profiles that point at them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fixtures.tiny_models import build_tiny_reranker, minilm_path
from gw_harness import Cluster, free_port_block, plan_for, profile_dict, start_workers

from tei_manager.core.models import Profile


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return minilm_path(), build_tiny_reranker(tmp_path_factory.mktemp("gw-tiny-reranker"))


@pytest.fixture(scope="session")
def cluster(model_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    minilm, reranker = model_dirs
    base = free_port_block(4)
    data = profile_dict(minilm, reranker, {"finance": base, "hr": base + 2, "shared": base + 3})
    plan = plan_for(Profile.model_validate(data))
    workers = start_workers(plan, tmp_path_factory.mktemp("gw-worker-logs"))
    try:
        yield Cluster(data, plan, workers)
    finally:
        for worker in workers.values():
            worker.stop()
