"""`serve` reloads: a change that only touches tenants or gateway settings reuses the last plan
(no engine or NVML probe); a change the plan depends on re-plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from tei_manager.cli.serve_cmd import GatewayLoader
from tei_manager.core.facts import HostFacts
from tei_manager.gateway.config import build_config

PROFILE = """
name: loader
models:
  minilm: {id: sentence-transformers/all-MiniLM-L6-v2, task: embed}
tenants:
  a: {api_keys: [{env: LOADER_KEY}], quota: {requests_per_second: 5}}
deployments:
  - {tenant: a, model: minilm, placement: cpu, runtime: fallback, port: 18900,
     tuning: {max_batch_requests: 4, max_client_batch_size: 8}}
"""


def test_reload_reuses_the_plan_unless_its_inputs_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[int] = []

    def probe_host(*args: object, **kwargs: object) -> HostFacts:
        probes.append(1)
        return HostFacts(nvml_error="none here")

    monkeypatch.setattr("tei_manager.probe.probe_host", probe_host)
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOADER_KEY", "k-1")
    path = tmp_path / "loader.yaml"
    path.write_text(PROFILE)
    loader = GatewayLoader(path, "process")

    _, plan, keys = loader()
    config = build_config(None, plan, keys)
    assert (len(probes), loader.plans_made) == (1, 1)
    assert config.tenants["a"].requests_per_second == 5 and not config.open
    (route,) = config.table.routes
    assert (route.capacity_per_replica, route.max_client_batch_size) == (8, 8)  # from the plan's settings

    path.write_text(PROFILE.replace("requests_per_second: 5", "requests_per_second: 7"))
    _, plan2, keys2 = loader()
    assert (len(probes), loader.plans_made) == (1, 1), "a quota change must not re-probe the host"
    assert build_config(None, plan2, keys2).tenants["a"].requests_per_second == 7

    path.write_text(PROFILE.replace("max_client_batch_size: 8", "max_client_batch_size: 4"))
    _, plan3, keys3 = loader()
    assert (len(probes), loader.plans_made) == (2, 2)
    (route,) = build_config(None, plan3, keys3).table.routes
    assert route.max_client_batch_size == 4
