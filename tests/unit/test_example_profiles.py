"""Every profile shipped in profiles/ loads and plans, and says what the seeds say."""

from __future__ import annotations

from pathlib import Path

import pytest

from tei_manager.core.facts import DockerFact, HostFacts, parse_gpu_specs
from tei_manager.core.planner import plan
from tei_manager.profiles import load_profile

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.yaml"))
TWO_L20 = HostFacts(gpus=parse_gpu_specs("0:NVIDIA L20:46068MiB:8.9,1:NVIDIA L20:46068MiB:8.9"),
                    docker=DockerFact(reachable=True, nvidia_runtime=True), origin="described")
CPU_ONLY = HostFacts(docker=DockerFact(reachable=True), nvml_error="NVML Shared Library Not Found")


def test_the_examples_are_there():
    assert {p.stem for p in PROFILES} >= {"l20-shared", "multi-tenant", "cpu-only", "quickstart"}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_loads_and_plans_on_two_l20s(path):
    profile = load_profile(path)
    assert profile.name == path.stem
    result = plan(profile, TWO_L20, source=str(path))
    assert len(result.instances) == sum(d.replicas for d in profile.deployments)
    ports = [i.host_port for i in result.instances]
    assert len(set(ports)) == len(ports) and profile.gateway.port not in ports


def test_l20_shared_is_seed_004():
    result = plan(load_profile(Path(PROFILES[0].parent / "l20-shared.yaml")), TWO_L20)
    emb, rr = result.instance("bge-embedding"), result.instance("bge-reranker")
    assert (emb.host_port, rr.host_port) == (8080, 8081)
    assert emb.gpu == rr.gpu == 0
    assert emb.image == "ghcr.io/huggingface/text-embeddings-inference:89-1.9.4"
    assert emb.args[:6] == ("--max-batch-tokens", "16384", "--max-concurrent-requests", "256",
                            "--max-client-batch-size", "16")
    assert rr.args[:6] == ("--max-batch-tokens", "8192", "--max-concurrent-requests", "128",
                           "--max-client-batch-size", "8")
    assert (emb.memory_bytes, emb.memory_swap_bytes) == (8 * 1024**3, 10 * 1024**3)
    assert (rr.memory_bytes, rr.memory_swap_bytes) == (4 * 1024**3, 6 * 1024**3)
    assert result.gpus[0].instances == ("bge-embedding", "bge-reranker")


def test_multi_tenant_is_seed_000():
    profile = load_profile(PROFILES[0].parent / "multi-tenant.yaml")
    assert {t: profile.tenants[t].priority for t in profile.tenants} == {
        "finance": "high", "hr": "normal", "marketing": "low"}
    assert [k.env for t in profile.tenants.values() for k in t.api_keys] == [
        "FINANCE_API_KEY", "HR_API_KEY", "MARKETING_API_KEY"]
    result = plan(profile, TWO_L20)
    rerank = {i.tenant: i for i in result.instances if i.task == "rerank"}
    assert {t: (i.device, i.host_port) for t, i in rerank.items()} == {
        "finance": ("gpu:0", 8081), "hr": ("gpu:1", 8082), "marketing": ("cpu", 8083)}
    for inst in result.instances:
        assert inst.memory_bytes == 6 * 1024**3 and inst.cpus == 3
    embed = {i.tenant: i for i in result.instances if i.task == "embed"}
    assert {t: i.device for t, i in embed.items()} == {"finance": "gpu:0", "hr": "gpu:1", "marketing": "cpu"}
    assert sorted(i.host_port for i in embed.values()) == [8084, 8085, 8086]
    assert (profile.gateway.bind, profile.gateway.port) == ("127.0.0.1", 8080)


def test_multi_tenant_needs_gpus_on_a_cpu_only_host():
    from tei_manager.errors import PlanError

    with pytest.raises(PlanError, match="no GPU"):
        plan(load_profile(PROFILES[0].parent / "multi-tenant.yaml"), CPU_ONLY)


@pytest.mark.parametrize("name", ["cpu-only", "quickstart"])
def test_cpu_profiles_plan_on_this_kind_of_host(name):
    result = plan(load_profile(PROFILES[0].parent / f"{name}.yaml"), CPU_ONLY)
    assert all(i.gpu is None and i.vram is None for i in result.instances)


def test_cpu_only_uses_the_tei_cpu_image():
    result = plan(load_profile(PROFILES[0].parent / "cpu-only.yaml"), CPU_ONLY)
    assert {i.image for i in result.instances} == {"ghcr.io/huggingface/text-embeddings-inference:cpu-1.9.4"}


def test_quickstart_runs_minilm_from_the_package_without_its_key(monkeypatch):
    monkeypatch.delenv("DEMO_API_KEY", raising=False)
    result = plan(load_profile(PROFILES[0].parent / "quickstart.yaml"), CPU_ONLY)
    embed, rerank = result.instances
    assert embed.runtime == rerank.runtime == "fallback"
    assert (embed.task, rerank.task) == ("embed", "rerank")
    assert Path(embed.model.local_path, "config.json").is_file()
    assert embed.served_model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert "--rerank-mode" in rerank.args and "--rerank-mode" not in embed.args
