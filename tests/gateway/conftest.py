"""Session fixtures: real models, real fallback workers on loopback, profiles that point at them."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fixtures.tiny_models import build_tiny_reranker, minilm_path
from gw_harness import WorkerProcess, free_port_block, plan_for, start_workers

from tei_manager.core.models import Profile
from tei_manager.core.plan import Plan

KEYS = {"finance": ["fin-key-1", "fin-key-2"], "hr": ["hr-key"], "ops": ["ops-key"]}
# Parameters of the tiny reranker the planner cannot look up (it is not a hub model).
TINY_NUMBERS = {"params_millions": 1, "hidden_size": 32, "num_layers": 2, "max_input_length": 128}


def profile_dict(minilm: Path, reranker: Path, ports: dict[str, int]) -> dict[str, Any]:
    """finance: MiniLM x2 (embed).  hr: a tiny cross-encoder (rerank) and a MiniLM that serves embed
    and bi-encoder rerank, marked `shared` so every tenant may use it.  ops: nothing of its own."""
    return {
        "name": "gateway-test",
        "models": {
            "minilm": {"id": "sentence-transformers/all-MiniLM-L6-v2", "task": "embed", "path": str(minilm)},
            "tiny-rr": {"id": "test/tiny-reranker", "task": "rerank", "path": str(reranker), **TINY_NUMBERS},
        },
        "tenants": {
            "finance": {"api_keys": [{"env": "FIN_KEY_1"}, {"env": "FIN_KEY_2"}], "priority": "high"},
            "hr": {"api_keys": [{"env": "HR_KEY"}]},
            "ops": {"api_keys": [{"env": "OPS_KEY"}], "priority": "low"},
        },
        "deployments": [
            {"tenant": "finance", "model": "minilm", "placement": "cpu", "replicas": 2,
             "port": ports["finance"], "runtime": "fallback"},
            {"tenant": "hr", "model": "tiny-rr", "placement": "cpu", "port": ports["hr"], "runtime": "fallback"},
            {"tenant": "hr", "model": "minilm", "name": "shared-minilm", "shared": True,
             "rerank_mode": "bi-encoder", "placement": "cpu", "port": ports["shared"], "runtime": "fallback"},
        ],
        "gateway": {"upstream_timeout_s": 30},
    }


@dataclass
class Cluster:
    base: dict[str, Any]
    plan: Plan
    workers: dict[str, WorkerProcess]

    def profile_data(self) -> dict[str, Any]:
        return copy.deepcopy(self.base)

    def profile(self, data: dict[str, Any] | None = None) -> Profile:
        return Profile.model_validate(data if data is not None else self.base)


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
