"""A profile's deployment as a tune request: its current values and the space for its runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from tei_manager.errors import ProfileError
from tei_manager.profiles import load_profile
from tei_manager.tune.requests import current_settings, forward_workers_from, request_for
from tei_manager.tune.workload import WorkloadError, synthetic

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def test_current_values_come_from_the_profile_with_auto_resolved_by_the_caller() -> None:
    cpu_only = load_profile(PROFILES / "cpu-only.yaml")
    with pytest.raises(ValueError, match="max_batch_tokens: auto"):
        current_settings(cpu_only, "cpu-embed")
    assert current_settings(cpu_only, "cpu-embed", max_batch_tokens=2048) == {
        "max_batch_tokens": 2048, "max_concurrent_requests": 64, "max_client_batch_size": 16}


def test_forward_workers_are_read_from_extra_args() -> None:
    assert forward_workers_from(["--forward-workers", "3"]) == 3
    assert forward_workers_from(["--x", "1", "--forward-workers=2"]) == 2
    assert forward_workers_from(["--forward-workers"]) is None
    assert forward_workers_from([]) is None


def test_a_rerank_deployment_gets_a_rerank_space_and_refuses_an_embed_workload() -> None:
    profile = load_profile(PROFILES / "l20-shared.yaml")
    rerank = synthetic("rerank", n=4, documents_per_query=12)
    request = request_for(profile, "bge-reranker", runtime="tei", workload=rerank, slo_p99_ms=150, on_gpu=True,
                          max_input_tokens=8192, default_dtype="float16")
    assert request.model == "BAAI/bge-reranker-v2-m3" and request.space.fixed == {"max_client_batch_size": 12}
    assert [d.name for d in request.space.dimensions] == ["max_batch_tokens", "max_batch_requests"]
    assert request.current["max_batch_tokens"] == 8192
    with pytest.raises(WorkloadError, match="serves rerank, but the workload is embed"):
        request_for(profile, "bge-reranker", runtime="tei", workload=synthetic("embed", n=4), slo_p99_ms=150,
                    on_gpu=True, max_input_tokens=8192, default_dtype="float16")
    with pytest.raises(ProfileError, match="no deployment named 'nope'"):
        current_settings(profile, "nope")
