"""The Docker backend on a real engine: two tenants served by the fallback worker image.

One deployment is applied once for the module (two containers; each start costs ~15 s on two
cores) and the tests walk through its life in order: limits and labels as `docker inspect` shows
them, real /embed and /rerank through the published ports, an idempotent re-apply, a tuning
change that replaces only its instance, failures that change nothing (missing image, port in use,
a TEI GPU instance on an engine without GPUs, rolled back), and `down`.

The TEI image cannot be pulled here and there is no GPU: a one-file local image tagged with the
planned TEI image name stands in for it, so the container spec can be created and inspected and
starting it fails exactly as it would on a GPU-less engine.
"""

from __future__ import annotations

import copy
import json
import socket
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from it_support import cleanup_profile, described_gpu_host, free_port, plan_profile, profile_containers, write_profile

from tei_manager.backends.docker import DockerBackend, container_spec
from tei_manager.cli.app import main
from tei_manager.errors import ApplyError, BackendError
from tei_manager.instance_keys import bearer
from tei_manager.orchestrator import apply, status

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TIMEOUT_S = 120
MiB = 2**20


def base_profile(name: str, image: str, models: Path, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "name": name,
        "fallback_image": image,
        "hf_cache": f"{name}-hf-cache",
        "tei_image": {"repository": f"tei-manager-test/tei-{name}", "version": "1.9"},
        "models": {
            "embedder": {"id": "BAAI/bge-m3", "task": "embed", "path": str(models / "embedder")},
            "reranker": {"id": "BAAI/bge-reranker-v2-m3", "task": "rerank", "path": str(models / "reranker")},
        },
        "tenants": {"finance": {}, "legal": {}},
        "deployments": [
            {"name": "finance-embed", "tenant": "finance", "model": "embedder", "placement": "cpu",
             "runtime": "fallback", "port": ports["finance-embed"],
             "tuning": {"max_batch_tokens": 2048, "max_client_batch_size": 8},
             "limits": {"memory": "1536m", "cpus": 1}},
            {"name": "legal-rerank", "tenant": "legal", "model": "reranker", "placement": "cpu",
             "runtime": "fallback", "port": ports["legal-rerank"],
             "tuning": {"max_batch_tokens": 2048, "max_client_batch_size": 8},
             "limits": {"memory": "1g", "cpus": 1.5}},
        ],
    }


class Deployment:
    """The module's applied profile and how to re-plan variations of it."""

    def __init__(self, client: Any, backend: DockerBackend, directory: Path, data: dict[str, Any]) -> None:
        self.client, self.backend, self.directory, self.data = client, backend, directory, data
        self.name = data["name"]

    def plan(self, data: dict[str, Any] | None = None) -> Any:
        # The same described host for every version, so CPU instances plan identically.
        return plan_profile(write_profile(self.directory, data or self.data), described_gpu_host())

    def variant(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def ids(self) -> dict[str, str]:
        return {c.name: c.id for c in profile_containers(self.client, self.name)}

    def container(self, instance: str) -> Any:
        return self.client.containers.get(f"tei-{self.name}-{instance}")

    def port(self, instance: str) -> int:
        return next(d["port"] for d in self.data["deployments"] if d["name"] == instance)


@pytest.fixture(scope="module")
def module_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One state directory for the whole module: its deployment lives across its tests, and so
    must the secret its instances' keys derive from."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("module-state")
        patch.setenv("TEI_MANAGER_STATE_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def _isolated_state(module_state: Path) -> None:
    """Overrides conftest's per-test state directory with the module's (see module_state)."""


@pytest.fixture(scope="module")
def deployment(docker_client: Any, worker_image: str, models_dir: Path, module_state: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = f"it-{uuid.uuid4().hex[:8]}"
    ports = {"finance-embed": free_port(), "legal-rerank": free_port()}
    dep = Deployment(docker_client, DockerBackend(), tmp_path_factory.mktemp("profiles"),
                     base_profile(name, worker_image, models_dir, ports))
    try:
        result = apply(dep.plan(), dep.backend, timeout_s=TIMEOUT_S)
        assert result.changed
        yield dep
    finally:
        cleanup_profile(docker_client, name)
        dep.backend.close()


def test_containers_carry_the_plan_limits_and_labels(deployment: Deployment) -> None:
    plan = deployment.plan()
    finance = deployment.container("finance-embed").attrs
    host = finance["HostConfig"]
    assert host["Memory"] == 1536 * MiB and host["MemorySwap"] == 1536 * MiB
    assert host["NanoCpus"] == 1_000_000_000
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(deployment.port("finance-embed"))}]}
    assert host["Privileged"] is False and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["IpcMode"] != "host" and host["ShmSize"] > 0
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    mounts = {m["Destination"]: m for m in finance["Mounts"]}
    assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Name"] == f"{deployment.name}-hf-cache"
    assert mounts["/models/embedder"]["RW"] is False
    assert "HUGGINGFACE_HUB_CACHE=/data" in finance["Config"]["Env"]
    assert finance["Config"]["Cmd"] == plan.instance("finance-embed").command(in_container=True)

    labels = finance["Config"]["Labels"]
    assert labels["tei-manager.profile"] == deployment.name
    assert labels["tei-manager.tenant"] == "finance" and labels["tei-manager.instance"] == "finance-embed"
    assert labels["tei-manager.runtime"] == "fallback" and labels["tei-manager.model"] == "BAAI/bge-m3"
    assert labels["tei-manager.spec-hash"] == plan.instance("finance-embed").spec_hash
    assert json.loads(labels["tei-manager.plan"])["tenant"] == "finance"

    legal = deployment.container("legal-rerank").attrs["HostConfig"]
    assert legal["Memory"] == 1024 * MiB and legal["NanoCpus"] == 1_500_000_000


def test_embed_and_rerank_answer_through_the_published_ports(deployment: Deployment) -> None:
    # The instances answer only who presents their internal key (the gateway); here, the test.
    embed = httpx.post(f"http://127.0.0.1:{deployment.port('finance-embed')}/embed",
                       headers=bearer(deployment.name, "finance-embed"),
                       json={"inputs": ["quarterly revenue", "legal hold"]}, timeout=60)
    assert embed.status_code == 200
    vectors = embed.json()
    assert len(vectors) == 2 and len(vectors[0]) > 8 and all(isinstance(x, float) for x in vectors[0])

    rerank = httpx.post(f"http://127.0.0.1:{deployment.port('legal-rerank')}/rerank",
                        headers=bearer(deployment.name, "legal-rerank"), json={"query": "contract law", "texts": ["a contract", "the weather", "statutes"]}, timeout=60)
    assert rerank.status_code == 200
    results = rerank.json()
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_reapply_touches_nothing(deployment: Deployment) -> None:
    before = deployment.ids()
    result = apply(deployment.plan(), deployment.backend, timeout_s=TIMEOUT_S)
    assert not result.changed
    assert {a.kind for a in result.actions} == {"keep"}
    assert deployment.ids() == before
    assert result.duration_s < 5


def test_status_reports_each_instance(deployment: Deployment) -> None:
    rows = {r.name: r for r in status(deployment.backend, deployment.name)}
    assert set(rows) == {"finance-embed", "legal-rerank"}
    finance = rows["finance-embed"]
    assert (finance.tenant, finance.runtime, finance.device, finance.state, finance.health) == \
        ("finance", "fallback", "cpu", "running", "healthy")
    assert finance.address == f"127.0.0.1:{deployment.port('finance-embed')}"
    assert finance.restarts == 0 and finance.uptime_s() > 0
    assert finance.gpu_memory_mib is None  # no NVIDIA driver on this engine
    # The host pids GPU memory is matched against include the container's main process.
    (obs,) = [o for o in deployment.backend.list(deployment.name) if o.name == "finance-embed"]
    main_pid = deployment.container("finance-embed").attrs["State"]["Pid"]
    assert main_pid in deployment.backend.pids(obs)


def test_changed_tuning_replaces_only_that_instance(deployment: Deployment) -> None:
    before = deployment.ids()
    data = deployment.variant()
    data["deployments"][1]["tuning"]["max_client_batch_size"] = 4
    result = apply(deployment.plan(data), deployment.backend, timeout_s=TIMEOUT_S)
    kinds = {a.name: a.kind for a in result.actions}
    assert kinds == {"finance-embed": "keep", "legal-rerank": "replace"}
    after = deployment.ids()
    prefix = f"tei-{deployment.name}-"
    assert set(after) == {prefix + "finance-embed", prefix + "legal-rerank"}  # no .old/.next copies left
    assert after[prefix + "finance-embed"] == before[prefix + "finance-embed"]
    assert after[prefix + "legal-rerank"] != before[prefix + "legal-rerank"]
    info = httpx.get(f"http://127.0.0.1:{deployment.port('legal-rerank')}/info",
                     headers=bearer(deployment.name, "legal-rerank"), timeout=10).json()
    assert info["max_client_batch_size"] == 4
    deployment.data = data


def test_missing_image_is_a_clear_error_that_changes_nothing(deployment: Deployment) -> None:
    before = deployment.ids()
    data = deployment.variant()
    data["fallback_image"] = f"tei-manager-test/missing-{deployment.name}:0"
    with pytest.raises(BackendError) as err:
        apply(deployment.plan(data), deployment.backend, timeout_s=TIMEOUT_S)
    assert not isinstance(err.value, ApplyError)  # refused before anything was touched
    assert "not found locally and could not be pulled" in err.value.what
    assert "build-worker-image.sh" in (err.value.fix or "")
    assert deployment.ids() == before


def test_port_in_use_is_refused_before_anything_starts(deployment: Deployment) -> None:
    before = deployment.ids()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        data = deployment.variant()
        extra = copy.deepcopy(data["deployments"][0])
        extra.update(name="finance-embed-2", port=squatter.getsockname()[1])
        data["deployments"].append(extra)
        with pytest.raises(BackendError) as err:
            apply(deployment.plan(data), deployment.backend, timeout_s=TIMEOUT_S)
    assert err.value.where == "finance-embed-2" and "already in use" in err.value.what
    assert deployment.ids() == before


def test_tei_gpu_instance_uses_the_seed_command_line(deployment: Deployment, stub_image: Any) -> None:
    data = deployment.variant()
    gpu_port = free_port()
    data["deployments"].append(
        {"name": "finance-gpu", "tenant": "finance", "model": "embedder", "placement": {"gpu": 0},
         "runtime": "tei", "port": gpu_port,
         "tuning": {"max_batch_tokens": 16384, "max_concurrent_requests": 256, "max_client_batch_size": 16},
         "limits": {"memory": "8g", "memory_swap": "10g"}})
    inst = deployment.plan(data).instance("finance-gpu")
    assert inst.runtime == "tei" and inst.image == f"tei-manager-test/tei-{deployment.name}:89-1.9"

    # The pure spec: seed 004's `text-embeddings-router` arguments, GPU 0, limits, loopback port.
    spec = container_spec(inst)
    assert spec["command"] == [
        "--model-id", "/models/embedder", "--port", "8080", "--hostname", "0.0.0.0",
        "--max-batch-tokens", "16384", "--max-concurrent-requests", "256", "--max-client-batch-size", "16",
        "--served-model-name", "BAAI/bge-m3",
    ]
    assert spec["ports"] == {"8080/tcp": ("127.0.0.1", gpu_port)}
    (request,) = spec["device_requests"]
    assert request["DeviceIDs"] == ["0"] and request["Capabilities"] == [["gpu"]]
    assert spec["mem_limit"] == 8 * 1024 * MiB and spec["memswap_limit"] == 10 * 1024 * MiB

    # The engine accepts that spec (with a stand-in image) and shows it back.
    stub_image(inst.image)
    created = deployment.backend.create(inst)
    try:
        attrs = deployment.client.containers.get(created.handle).attrs
        assert attrs["Config"]["Entrypoint"] == ["text-embeddings-router"]
        assert attrs["Config"]["Cmd"] == spec["command"]
        (device,) = attrs["HostConfig"]["DeviceRequests"]
        assert device["DeviceIDs"] == ["0"] and device["Capabilities"] == [["gpu"]]
        assert attrs["HostConfig"]["Memory"] == 8 * 1024 * MiB
    finally:
        deployment.backend.remove(created)


def test_gpu_instance_on_a_gpuless_engine_fails_and_rolls_back(deployment: Deployment, stub_image: Any) -> None:
    before = deployment.ids()
    data = deployment.variant()
    data["deployments"].append(
        {"name": "finance-gpu", "tenant": "finance", "model": "embedder", "placement": {"gpu": 0},
         "runtime": "tei", "port": free_port()})
    plan = deployment.plan(data)
    stub_image(plan.instance("finance-gpu").image)
    with pytest.raises(ApplyError) as err:
        apply(plan, deployment.backend, timeout_s=TIMEOUT_S)
    assert err.value.where == "finance-gpu"
    assert "GPU 0 requested but this Docker Engine has no NVIDIA runtime" in err.value.what
    assert "rolled back" in err.value.what
    assert "nvidia-container-toolkit" in err.value.fix and "cpu" in err.value.fix

    assert deployment.ids() == before  # the earlier containers untouched, nothing left of the new one
    for row in status(deployment.backend, deployment.name):
        assert (row.state, row.health) == ("running", "healthy")


def test_down_removes_exactly_the_profile_and_keeps_the_cache(deployment: Deployment, capsys: Any) -> None:
    assert main(["down", deployment.name, "--backend", "docker"]) == 0
    assert profile_containers(deployment.client, deployment.name) == []
    assert deployment.client.volumes.get(f"{deployment.name}-hf-cache")  # the shared cache stays
    out = capsys.readouterr().out
    assert "removed 2 instance(s)" in out and "cache volume is kept" in out
