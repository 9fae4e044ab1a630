"""The planner: runtimes, images, devices, ports, VRAM budgets and TEI's arguments."""

from __future__ import annotations

import textwrap

import pytest

from tei_manager.core.facts import DockerFact, GpuProcess, HostFacts, parse_gpu_specs
from tei_manager.core.models import Profile
from tei_manager.core.planner import AUTO_PORT_BASE, plan
from tei_manager.core.tuning import TEI_VRAM, estimate_vram
from tei_manager.core.catalog import KNOWN_MODELS
from tei_manager.errors import OvercommitError, PlanError
from tei_manager.profiles import parse_profile

DOCKER_GPU = DockerFact(reachable=True, nvidia_runtime=True, version="27.0")
TWO_L20 = HostFacts(gpus=parse_gpu_specs("0:NVIDIA L20:46068MiB:8.9,1:NVIDIA L20:46068MiB:8.9"),
                    docker=DOCKER_GPU, origin="described")
CPU_HOST = HostFacts(docker=DockerFact(reachable=True), nvml_error="NVML Shared Library Not Found")
NO_DOCKER_CPU = HostFacts(docker=DockerFact(reachable=False, error="connection refused"), nvml_error="no driver")

MODELS = """
models:
  m3: {id: BAAI/bge-m3, task: embed}
  rr: {id: BAAI/bge-reranker-v2-m3, task: rerank}
"""


def profile(deployments: str, extra: str = "") -> Profile:
    text = "name: t\n" + MODELS + textwrap.dedent(extra) + "deployments:\n" + textwrap.indent(
        textwrap.dedent(deployments), "  ")
    return parse_profile(text, file="t.yaml")[0]


def host(*specs: str, free: int | None = None, docker: DockerFact = DOCKER_GPU, **kw) -> HostFacts:
    gpus = parse_gpu_specs(",".join(specs))
    if free is not None:
        gpus = tuple(g.model_copy(update={"free_mib": free, **kw}) for g in gpus)
    return HostFacts(gpus=gpus, docker=docker)


# --- runtime and image -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cc", "tag"), [("7.5", "turing-1.9.4"), ("8.0", "1.9.4"), ("8.6", "86-1.9.4"),
                                         ("8.9", "89-1.9.4"), ("9.0", "hopper-1.9.4"), ("12.0", "120-1.9.4")])
def test_auto_runs_tei_with_the_image_for_the_gpu(cc, tag):
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: 8192}}")
    inst = plan(p, host(f"0:GPU:80GiB:{cc}")).instances[0]
    assert inst.runtime == "tei"
    assert inst.image == f"ghcr.io/huggingface/text-embeddings-inference:{tag}"
    assert inst.gpu == 0 and inst.device == "gpu:0"


def test_old_gpu_falls_back_under_auto_and_is_refused_under_tei():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}}")
    inst = plan(p, host("0:Tesla P100:16GiB:6.0")).instances[0]
    assert inst.runtime == "fallback"
    assert inst.image == p.fallback_image
    assert "compute capability 6.0" in inst.runtime_reason
    forced = profile("- {tenant: a, model: m3, placement: {gpu: 0}, runtime: tei}")
    with pytest.raises(PlanError, match=r"compute capability 6\.0") as exc:
        plan(forced, host("0:Tesla P100:16GiB:6.0"))
    assert "deployments[0]" in exc.value.render()


def test_cpu_uses_the_tei_cpu_image_when_docker_answers():
    p = profile("- {tenant: a, model: m3, placement: cpu}")
    inst = plan(p, CPU_HOST).instances[0]
    assert inst.runtime == "tei"
    assert inst.image.endswith(":cpu-1.9.4")
    assert inst.gpu is None and inst.vram is None


def test_no_docker_means_fallback_with_the_reason():
    p = profile("- {tenant: a, model: m3, placement: cpu}")
    result = plan(p, NO_DOCKER_CPU)
    inst = result.instances[0]
    assert inst.runtime == "fallback"
    assert "Docker Engine not reachable (connection refused)" in inst.runtime_reason
    assert any("CPU-only host: NVML not available (no driver)" in w for w in result.warnings)


def test_gpu_without_nvidia_runtime_falls_back():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}}")
    inst = plan(p, host("0:L20:46068:8.9", docker=DockerFact(reachable=True))).instances[0]
    assert inst.runtime == "fallback" and "NVIDIA runtime" in inst.runtime_reason


def test_bi_encoder_rerank_forces_the_fallback_worker():
    p = profile("- {tenant: a, model: m3, placement: cpu, rerank_mode: bi-encoder}")
    inst = plan(p, CPU_HOST).instances[0]
    assert inst.runtime == "fallback" and inst.task == "rerank"
    assert inst.args[-2:] == ("--rerank-mode", "bi-encoder")


def test_bfloat16_is_fallback_only():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}, tuning: {dtype: bfloat16}}")
    inst = plan(p, TWO_L20).instances[0]
    assert inst.runtime == "fallback" and "bfloat16" in inst.runtime_reason


# --- arguments -------------------------------------------------------------------------------------------


def test_arguments_follow_seed_004_then_optional_flags():
    p = profile("""
        - tenant: a
          model: m3
          placement: {gpu: 0}
          tuning:
            max_batch_tokens: 16384
            max_concurrent_requests: 256
            max_client_batch_size: 16
            extra_args: [--json-output]
    """)
    inst = plan(p, TWO_L20).instances[0]
    assert inst.args == ("--max-batch-tokens", "16384", "--max-concurrent-requests", "256",
                         "--max-client-batch-size", "16", "--served-model-name", "BAAI/bge-m3", "--json-output")
    assert inst.command(in_container=True)[:6] == ["--model-id", "BAAI/bge-m3", "--port", "8080",
                                                   "--hostname", "0.0.0.0"]


def test_optional_flags_only_when_set():
    p = profile("""
        - tenant: a
          model: m3
          placement: {gpu: 0}
          tuning: {dtype: float32, pooling: mean, max_batch_requests: 4, tokenization_workers: 2,
                   auto_truncate: false, max_batch_tokens: 8192}
    """, extra="")
    args = plan(p, TWO_L20).instances[0].args
    text = " ".join(args)
    for flag in ("--dtype float32", "--pooling mean", "--max-batch-requests 4", "--tokenization-workers 2",
                 "--auto-truncate false"):
        assert flag in text
    assert "--revision" not in text and "--rerank-mode" not in text


def test_revision_is_passed_when_pinned():
    text = "name: t\nmodels:\n  m3: {id: BAAI/bge-m3, task: embed, revision: abc123}\n" \
           "deployments:\n  - {tenant: a, model: m3, placement: cpu}\n"
    p = parse_profile(text)[0]
    args = plan(p, CPU_HOST).instances[0].args
    assert args[args.index("--revision") + 1] == "abc123"


def test_budget_below_max_input_without_truncation_is_refused():
    p = profile("- {tenant: a, model: m3, placement: cpu, tuning: {max_batch_tokens: 4096, auto_truncate: false}}")
    with pytest.raises(PlanError, match="TEI refuses to start"):
        plan(p, CPU_HOST)
    ok = profile("- {tenant: a, model: m3, placement: cpu, tuning: {max_batch_tokens: 4096}}")
    assert any("truncated" in w for w in plan(ok, CPU_HOST).warnings)


# --- devices -----------------------------------------------------------------------------------------------


def test_gpu_not_on_host_names_index_and_host_gpus():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 2}}")
    with pytest.raises(PlanError) as exc:
        plan(p, TWO_L20)
    text = exc.value.render()
    assert "GPU 2" in text and "GPU 0 (NVIDIA L20), GPU 1 (NVIDIA L20)" in text
    assert exc.value.exit_code == 2


def test_gpu_placement_on_cpu_only_host_says_pass_gpus():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}}")
    with pytest.raises(PlanError, match="no GPU") as exc:
        plan(p, CPU_HOST)
    assert "--gpus" in exc.value.render()


def test_replicas_spread_round_robin():
    p = profile("- {tenant: a, model: m3, placement: {gpu: [0, 1]}, replicas: 3, tuning: {max_batch_tokens: 8192}}")
    result = plan(p, TWO_L20)
    assert [(i.name, i.gpu, i.replica) for i in result.instances] == [("a-m3-0", 0, 0), ("a-m3-1", 1, 1),
                                                                      ("a-m3-2", 0, 2)]


def test_shared_placement_picks_the_gpu_with_most_room():
    p = profile("""
        - {name: big, tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: 65536}}
        - {name: s1, tenant: a, model: rr, placement: shared, tuning: {max_batch_tokens: 8192}}
        - {name: s2, tenant: a, model: rr, placement: shared, tuning: {max_batch_tokens: 8192}}
    """)
    result = plan(p, TWO_L20)
    gpus = {i.name: i.gpu for i in result.instances}
    assert gpus["s1"] == 1 and gpus["s2"] == 1  # GPU 1 has more room even after s1
    budget = {g.index: g for g in result.gpus}
    assert budget[1].instances == ("s1", "s2")
    assert budget[0].planned_mib == result.instance("big").vram.total_mib


def test_shared_bin_packing_spreads_when_rooms_even_out():
    host2 = host("0:A:12GiB:8.9", "1:B:12GiB:8.9")
    p = profile("""
        - {name: e1, tenant: a, model: m3, tuning: {max_batch_tokens: 16384}}
        - {name: e2, tenant: a, model: m3, tuning: {max_batch_tokens: 16384}}
    """)
    result = plan(p, host2)
    assert {i.name: i.gpu for i in result.instances} == {"e1": 0, "e2": 1}


# --- VRAM ----------------------------------------------------------------------------------------------------


def test_budget_is_total_minus_headroom_minus_other_processes():
    facts = host("0:L20:46068:8.9", free=40000,
                 processes=(GpuProcess(pid=10, used_mib=2000), GpuProcess(pid=11, used_mib=4068)))
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: 8192}}")
    gpu = plan(p, facts).gpus[0]
    assert gpu.in_use_mib == 6068 and gpu.budget_mib == 46068 - 1024 - 6068
    # re-planning a running profile does not count its own instance as foreign memory
    own = plan(p, facts, own_pids={11}).gpus[0]
    assert own.in_use_mib == 2000


def test_overcommit_names_gpu_instances_estimates_and_fixes():
    p = profile("""
        - {name: e1, tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: 131072}}
        - {name: r1, tenant: a, model: rr, placement: {gpu: 0}, tuning: {max_batch_tokens: 8192}}
    """)
    small = host("0:NVIDIA A2:12GiB:8.6", "1:NVIDIA L20:46068:8.9")
    with pytest.raises(OvercommitError) as exc:
        plan(p, small)
    text = exc.value.render()
    assert exc.value.exit_code == 2
    assert text.startswith("GPU 0: NVIDIA A2 is over-committed")
    assert "the budget is 11264 MiB (12288 total - 1024 headroom - 0 in use by other processes)" in text
    e1 = estimate_vram(KNOWN_MODELS["BAAI/bge-m3"], dtype="float16", max_batch_tokens=131072, flash=True,
                       runtime=TEI_VRAM)
    assert f"e1: {e1.total_mib} MiB" in text and "r1: " in text and "max_batch_tokens 131072" in text
    assert "lower deployments[0].tuning.max_batch_tokens (e1) from 131072 to 94208" in text
    assert "move e1 to GPU 1" in text
    assert "`cpu`" in text


def test_padded_turing_batches_overcommit_a_t4_and_suggest_lowering_all():
    # TEI issue #670: bge-m3 on turing-1.x OOMs at warmup next to other models. Padded attention
    # materialises heads x L x L scores, so two 16k-token budgets do not fit a T4.
    p = profile("""
        - {name: e1, tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: 16384}}
        - {name: r1, tenant: a, model: rr, placement: {gpu: 0}, tuning: {max_batch_tokens: 16384}}
    """)
    with pytest.raises(OvercommitError) as exc:
        plan(p, host("0:Tesla T4:15360:7.5"))
    text = exc.value.render()
    assert text.startswith("GPU 0: Tesla T4 is over-committed")
    assert "lower max_batch_tokens of e1 (deployments[0]) to 8192, r1 (deployments[1]) to 8192" in text


def test_auto_fills_the_share_and_stays_at_least_8192():
    p = profile("""
        - {name: e1, tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: auto}}
        - {name: r1, tenant: a, model: rr, placement: {gpu: 0}, tuning: {max_batch_tokens: auto}}
    """)
    result = plan(p, host("0:NVIDIA A10G:8GiB:8.6"))
    e1, r1 = result.instances
    budget = result.gpus[0].budget_mib
    for inst in (e1, r1):
        tokens = int(inst.args[inst.args.index("--max-batch-tokens") + 1])
        assert tokens >= 8192 and tokens % 1024 == 0
        assert inst.vram.max_batch_tokens == tokens
        assert inst.vram.total_mib <= budget // 2
    assert result.gpus[0].planned_mib <= budget


def test_auto_refuses_when_8192_does_not_fit_unless_truncation_is_accepted():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: auto}}")
    tight = host("0:Small:3000:8.9")
    with pytest.raises(OvercommitError, match="accept_truncation"):
        plan(p, tight)
    ok = profile("- {tenant: a, model: m3, placement: {gpu: 0}, "
                 "tuning: {max_batch_tokens: auto, accept_truncation: true}}")
    result = plan(ok, tight)
    tokens = result.instances[0].vram.max_batch_tokens
    assert tokens < 8192
    assert any("truncated" in w for w in result.warnings)


def test_cpu_instances_use_no_vram():
    p = profile("- {tenant: a, model: m3, placement: cpu}")
    result = plan(p, TWO_L20)
    assert result.instances[0].vram is None
    assert all(g.planned_mib == 0 for g in result.gpus)


# --- ports ---------------------------------------------------------------------------------------------------


def test_auto_ports_skip_explicit_gateway_and_observed():
    p = profile("""
        - {name: a1, tenant: a, model: m3, placement: cpu, port: 8081}
        - {name: a2, tenant: a, model: m3, placement: cpu}
        - {name: a3, tenant: a, model: m3, placement: cpu}
    """)
    result = plan(p, CPU_HOST, observed_ports={8082})
    ports = {i.name: i.host_port for i in result.instances}
    assert AUTO_PORT_BASE == 8080  # the gateway's default port: skipped
    assert ports == {"a1": 8081, "a2": 8083, "a3": 8084}


def test_replicas_with_explicit_port_count_up():
    p = profile("- {tenant: a, model: m3, placement: cpu, port: 9000, replicas: 3}")
    assert [i.host_port for i in plan(p, CPU_HOST).instances] == [9000, 9001, 9002]


def test_explicit_port_collision_names_both_deployments():
    p = Profile.model_validate(
        {"name": "t", "models": {"m3": {"id": "BAAI/bge-m3", "task": "embed"}},
         "deployments": [{"name": "one", "tenant": "a", "model": "m3", "placement": "cpu", "port": 9000,
                          "replicas": 2},
                         {"name": "two", "tenant": "a", "model": "m3", "placement": "cpu", "port": 9001}]},
        context={"skip_references": True})
    with pytest.raises(PlanError) as exc:
        plan(p, CPU_HOST)
    text = exc.value.render()
    assert "9001" in text and "'one'" in text and "'two'" in text


def test_observed_explicit_port_is_a_warning():
    p = profile("- {tenant: a, model: m3, placement: cpu, port: 9000}")
    assert any("9000" in w for w in plan(p, CPU_HOST, observed_ports={9000}).warnings)


# --- the Plan ----------------------------------------------------------------------------------------------


def test_plan_is_deterministic_and_hashes_are_stable():
    p = profile("""
        - {tenant: a, model: m3, placement: shared}
        - {tenant: b, model: rr, placement: shared}
    """)
    first, second = plan(p, TWO_L20, source="x.yaml"), plan(p, TWO_L20, source="x.yaml")
    assert first == second
    assert [i.spec_hash for i in first.instances] == [i.spec_hash for i in second.instances]
    assert first.host == "described" and first.source == "x.yaml"


def test_limits_and_env_reach_the_instance():
    p = profile("""
        - tenant: a
          model: rr
          placement: cpu
          env: {LOG_LEVEL: debug}
          limits: {memory: 6g, memory_swap: 8g, cpus: 3, shm_size: 1g}
    """)
    inst = plan(p, CPU_HOST).instances[0]
    assert inst.memory_bytes == 6 * 1024**3 and inst.memory_swap_bytes == 8 * 1024**3
    assert inst.cpus == 3 and inst.shm_bytes == 1024**3
    assert inst.env == {"LOG_LEVEL": "debug"}


def test_unknown_model_without_numbers_is_a_plan_error():
    text = "name: t\nmodels:\n  x: {id: acme/encoder, task: embed}\ndeployments:\n  - {tenant: a, model: x, placement: cpu}\n"
    with pytest.raises(PlanError, match="params_millions") as exc:
        plan(parse_profile(text)[0], CPU_HOST)
    assert "models.x" in exc.value.render()


def test_estimate_in_plan_matches_the_tuning_module():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: 16384}}")
    inst = plan(p, TWO_L20).instances[0]
    assert inst.vram == estimate_vram(KNOWN_MODELS["BAAI/bge-m3"], dtype="float16", max_batch_tokens=16384,
                                      flash=True, runtime=TEI_VRAM)


def test_shared_with_runtime_tei_skips_gpus_tei_cannot_use():
    p = profile("- {tenant: a, model: m3, placement: shared, runtime: tei, tuning: {max_batch_tokens: 8192}}")
    result = plan(p, host("0:Tesla P100:16GiB:6.0", "1:NVIDIA L4:23034:8.9"))
    assert result.instances[0].gpu == 1 and result.instances[0].runtime == "tei"
    with pytest.raises(PlanError, match="no GPU can run it"):
        plan(p, host("0:Tesla P100:16GiB:6.0"))


def test_gh200_gets_the_fallback_worker_with_the_reason():
    p = profile("- {tenant: a, model: m3, placement: {gpu: 0}, tuning: {max_batch_tokens: 8192}}")
    facts = host("0:NVIDIA GH200 480GB:97871MiB:9.0").model_copy(update={"cpu_arch": "arm64"})
    inst = plan(p, facts).instances[0]
    assert inst.runtime == "fallback"
    assert "no arm64 image for compute capability 9.0" in inst.runtime_reason and "GH200" in inst.runtime_reason


def test_arm64_cpu_gets_the_cpu_arm64_image():
    p = profile("- {tenant: a, model: m3, placement: cpu, tuning: {max_batch_tokens: 8192}}")
    inst = plan(p, CPU_HOST.model_copy(update={"cpu_arch": "arm64"})).instances[0]
    assert inst.runtime == "tei" and inst.image.endswith(":cpu-arm64-1.9.4")
