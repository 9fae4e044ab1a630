"""A trial instance on a real Docker Engine: the fallback worker image on CPU, the quickstart's MiniLM.

What only a real engine shows: the trial container is published on loopback with the deployment's
limits, lets in only requests with its key, its peak memory is the container's cgroup high-water
mark, and it is gone afterwards. Needs a reachable engine (fails, never skips, without one).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from docker_image import ensure_worker_image

import docker
from tei_manager.backends.docker import DockerBackend
from tei_manager.core.facts import DockerFact, HostFacts
from tei_manager.core.planner import plan
from tei_manager.profiles import load_profile
from tei_manager.tune.backend_target import BackendTrialTarget

pytestmark = [pytest.mark.docker, pytest.mark.slow]

QUICKSTART = Path(__file__).resolve().parents[2] / "profiles" / "quickstart.yaml"


def test_a_trial_container_has_the_deployments_limits_its_key_and_a_cgroup_peak(tmp_path: Path) -> None:
    image = ensure_worker_image()
    data = yaml.safe_load(QUICKSTART.read_text())
    data["fallback_image"] = image
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data))
    facts = HostFacts(docker=DockerFact(reachable=True), nvml_error="no GPU here")
    base = plan(load_profile(path), facts).instance("demo-embed")
    backend = DockerBackend()
    target = BackendTrialTarget(backend, base, ready_timeout=180)
    target.prepare()
    instance = target.start({"max_batch_tokens": 1024, "max_client_batch_size": 4, "max_concurrent_requests": 16})
    try:
        (listed,) = backend.list("quickstart-tune")
        attrs = docker.from_env().containers.get(listed.handle).attrs
        assert attrs["HostConfig"]["Memory"] == base.memory_bytes == 2 * 1024**3
        assert attrs["HostConfig"]["NanoCpus"] == 2 * 10**9
        (binding,) = attrs["HostConfig"]["PortBindings"]["8080/tcp"]
        assert binding["HostIp"] == "127.0.0.1" and instance.base_url.endswith(f":{binding['HostPort']}")
        body = {"inputs": ["hello", "你好"]}
        assert httpx.post(instance.base_url + "/embed", json=body, timeout=30).status_code == 401
        answer = httpx.post(instance.base_url + "/embed", json=body, headers=dict(instance.headers), timeout=30)
        assert answer.status_code == 200 and len(answer.json()) == 2
        peak = instance.peak_memory_bytes()
        assert peak is not None and peak > 100 * 2**20  # the container's cgroup peak: torch and the model
    finally:
        instance.stop()
    assert backend.list("quickstart-tune") == []
    backend.close()
