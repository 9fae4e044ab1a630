"""What the export decides: GPU sharing, VRAM per GPU type, secrets, isolation, autoscaling.

Profiles are the seed files with one change each, written to a temporary file and exported
through the CLI or `build()` (the same path the backend uses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from k8s_manifests import K8S_VERSIONS, ROOT, validate_custom

from tei_manager.cli.app import main
from tei_manager.errors import OvercommitError, PlanError
from tei_manager.export.cluster import mig_slices
from tei_manager.export.writer import build, to_yaml

A100_80 = {"product": "NVIDIA-A100-SXM4-80GB", "memory": "81920MiB", "compute_capability": "8.0"}


def variant(tmp_path: Path, name: str, change: Any) -> Path:
    data = yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def objects(path: Path, kind: str) -> list[dict[str, Any]]:
    return [m for m in build(path)[1] if m["kind"] == kind]


def test_colocation_without_a_sharing_mode_is_refused(tmp_path: Path) -> None:
    path = variant(tmp_path, "l20-shared", lambda d: d["kubernetes"].pop("gpu_sharing"))
    with pytest.raises(PlanError) as err:
        build(path)
    assert err.value.where == "kubernetes.gpu_sharing"
    assert "bge-embedding, bge-reranker" in err.value.what and "time-slicing" in (err.value.fix or "")


def test_time_sliced_pods_ask_for_one_gpu_each_on_l20_nodes() -> None:
    deployments = objects(ROOT / "profiles" / "l20-shared.yaml", "Deployment")
    for dep in (d for d in deployments if d["metadata"]["labels"]["app.kubernetes.io/component"] == "instance"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        match = {e["key"]: e["values"] for e in terms["nodeSelectorTerms"][0]["matchExpressions"]}
        assert match == {"kubernetes.io/arch": ["amd64"], "nvidia.com/gpu.product": ["NVIDIA-L20"],
                         "nvidia.com/gpu.compute.major": ["8"], "nvidia.com/gpu.compute.minor": ["9"]}
        # The image is the one built for compute capability 8.9.
        assert pod["containers"][0]["image"].endswith(":89-1.9.4")


def test_time_slicing_refuses_pods_that_cannot_share_a_gpu(tmp_path: Path) -> None:
    """Any N pods may land on one GPU: with 4 slices, four autoscaled embedders exceed an L20
    although the plan's pair fits it."""
    def more(d: dict[str, Any]) -> None:
        d["kubernetes"]["time_slicing_replicas"] = 4
        d["deployments"][0]["tuning"]["max_batch_tokens"] = 131072
        d["deployments"][0]["autoscaling"] = {"min_replicas": 1, "max_replicas": 4}
    path = variant(tmp_path, "l20-shared", more)
    with pytest.raises(OvercommitError) as err:
        build(path)
    assert "any 4 pods may share one NVIDIA-L20" in err.value.what and "does not isolate memory" in err.value.what


def test_mig_is_refused_on_a_gpu_without_mig(tmp_path: Path) -> None:
    path = variant(tmp_path, "l20-shared", lambda d: d["kubernetes"].update(gpu_sharing="mig"))
    with pytest.raises(PlanError, match="NVIDIA-L20 has no MIG"):
        build(path)


def test_mig_slices_become_their_own_resource(tmp_path: Path) -> None:
    def to_a100(d: dict[str, Any]) -> None:
        d["kubernetes"].update(gpu_sharing="mig", gpus=[A100_80])
        d["deployments"][0]["mig_profile"] = "3g.40gb"
        d["deployments"][1]["mig_profile"] = "2g.20gb"
    path = variant(tmp_path, "l20-shared", to_a100)
    deployments = {d["metadata"]["name"]: d for d in objects(path, "Deployment")}
    limits = deployments["bge-embedding"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/mig-3g.40gb"] == "1" and "nvidia.com/gpu" not in limits
    assert deployments["bge-embedding"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.9.4")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(deployments["bge-reranker"], version, strict=True)


def test_a_mig_slice_too_small_for_the_vram_plan_is_refused(tmp_path: Path) -> None:
    def small(d: dict[str, Any]) -> None:
        d["kubernetes"].update(gpu_sharing="mig", gpus=[A100_80])
        d["deployments"][0]["mig_profile"] = "1g.10gb"
        d["deployments"][0]["tuning"]["max_batch_tokens"] = 262144
        d["deployments"][1]["mig_profile"] = "unknown.1gb"
    path = variant(tmp_path, "l20-shared", small)
    with pytest.raises(OvercommitError) as err:
        build(path)
    assert "1g.10gb slice holds" in err.value.what and "larger slice" in (err.value.fix or "")


def test_mig_slice_table() -> None:
    assert mig_slices("NVIDIA-A100-SXM4-40GB", 40960) is not None
    assert "1g.5gb" in (mig_slices("NVIDIA-A100-SXM4-40GB", 40960) or {})
    assert "3g.71gb" in (mig_slices("NVIDIA-H200", 143771) or {})
    assert mig_slices("NVIDIA-L20", 46068) is None and mig_slices("Tesla-T4", 15360) is None


def test_tenant_keys_and_hf_token_are_referenced_never_rendered(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINANCE_API_KEY", "sk-finance-do-not-render")
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_render")
    path = variant(tmp_path, "multi-tenant", lambda d: d["kubernetes"].update(hf_token_secret="hf-token"))
    manifests = build(path)[1]
    text = "".join(to_yaml(m) for m in manifests)
    assert "do-not-render" not in text and "do_not_render" not in text
    gateway = next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("gateway"))
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FINANCE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "multi-tenant-tenant-keys",
                                                                   "key": "FINANCE_API_KEY"}
    instance = next(m for m in manifests if m["metadata"]["name"] == "finance-embed" and m["kind"] == "Deployment")
    env = {e["name"]: e for e in instance["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}


def test_every_container_is_locked_down() -> None:
    for manifest in objects(ROOT / "profiles" / "multi-tenant.yaml", "Deployment"):
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]


def test_instances_accept_traffic_only_from_the_gateway_and_prometheus() -> None:
    (policy,) = objects(ROOT / "profiles" / "multi-tenant.yaml", "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "instance"
    sources = [rule["from"][0] for rule in spec["ingress"]]
    assert sources == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "multi-tenant",
                                         "app.kubernetes.io/component": "gateway"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]


def test_pods_are_isolated_by_the_network_policy_not_by_a_host_key() -> None:
    """The host's internal instance keys come from a secret file on the host: in a cluster the
    NetworkPolicy above isolates instances, so no pod waits for a key nobody could present."""
    planned = 0
    for deployment in objects(ROOT / "profiles" / "multi-tenant.yaml", "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert "API_KEY" not in {e["name"] for e in container.get("env", [])}
        plan = deployment["metadata"].get("annotations", {}).get("tei-manager.io/plan")
        if plan is not None:
            assert json.loads(plan)["internal_auth"] is False
            planned += 1
    assert planned >= 4  # every instance Deployment carries its plan


def test_gateway_runs_at_least_two_replicas_with_the_profile() -> None:
    manifests = build(ROOT / "profiles" / "l20-shared.yaml")[1]
    gateway = next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "l20-shared-gateway")
    assert gateway["spec"]["replicas"] >= 2
    config = next(m for m in manifests if m["kind"] == "ConfigMap")
    assert config["data"]["profile.yaml"] == (ROOT / "profiles" / "l20-shared.yaml").read_text()


def test_keda_and_hpa_autoscaling_from_the_profile(tmp_path: Path) -> None:
    keda = objects(ROOT / "profiles" / "multi-tenant.yaml", "ScaledObject")
    assert [k["metadata"]["name"] for k in keda] == ["finance-embed"]
    assert keda[0]["spec"]["minReplicaCount"] == 1 and keda[0]["spec"]["maxReplicaCount"] == 3
    assert "te_queue_size" in keda[0]["spec"]["triggers"][0]["metadata"]["query"]
    validate_custom(keda[0])
    scaled = next(d for d in objects(ROOT / "profiles" / "multi-tenant.yaml", "Deployment")
                  if d["metadata"]["name"] == "finance-embed")
    assert "replicas" not in scaled["spec"]  # the autoscaler owns it

    path = variant(tmp_path, "multi-tenant", lambda d: d["kubernetes"].update(autoscaler="hpa"))
    (hpa,) = objects(path, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "te_queue_size"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


def test_model_cache_choices(tmp_path: Path) -> None:
    path = variant(tmp_path, "cpu-only", lambda d: d.update(kubernetes={"model_cache": {
        "kind": "existing-claim", "claim": "shared-models"}}))
    assert not objects(path, "PersistentVolumeClaim")
    dep = objects(path, "Deployment")[0]
    assert dep["spec"]["template"]["spec"]["volumes"][0] == {
        "name": "model-cache", "persistentVolumeClaim": {"claimName": "shared-models"}}
    path = variant(tmp_path, "cpu-only", lambda d: d.update(kubernetes={"model_cache": {
        "kind": "host-path", "path": "/srv/models"}}))
    assert objects(path, "Deployment")[0]["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] == "/srv/models"


def test_export_without_cluster_gpus_says_how_to_describe_them(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = variant(tmp_path, "l20-shared", lambda d: d.pop("kubernetes"))
    assert main(["export", "kubernetes", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "kubernetes.gpus" in err and "Traceback" not in err
    # --gpus describes them instead (still needs a sharing choice for the co-located pair).
    assert main(["export", "kubernetes", str(path), "-o", str(tmp_path / "out"),
                 "--gpus", "0:NVIDIA L20:46068MiB:8.9"]) == 2
    assert "gpu_sharing" in capsys.readouterr().err


def test_state_annotations_carry_the_plan_without_secrets() -> None:
    dep = next(d for d in objects(ROOT / "profiles" / "l20-shared.yaml", "Deployment")
               if d["metadata"]["name"] == "bge-embedding")
    annotations = dep["metadata"]["annotations"]
    plan = json.loads(annotations["tei-manager.io/plan"])
    assert plan["bind"] == "bge-embedding.l20-shared.svc" and plan["host_port"] == 8080
    assert annotations["tei-manager.io/spec-hash"] == dep["spec"]["template"]["metadata"]["annotations"][
        "tei-manager.io/spec-hash"]


def test_a_credential_in_a_deployment_env_is_refused(tmp_path: Path) -> None:
    def token(d: dict[str, Any]) -> None:
        d["deployments"][0]["env"] = {"HF_TOKEN": "hf_plain_text_in_profile", "RUST_LOG": "info"}
    path = variant(tmp_path, "l20-shared", token)
    with pytest.raises(PlanError) as err:
        build(path)
    assert err.value.where == "deployments[0].env.HF_TOKEN" and "hf_token_secret" in (err.value.fix or "")
    assert "hf_plain_text_in_profile" not in err.value.render()


def test_export_again_removes_objects_the_profile_no_longer_has(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    assert main(["export", "kubernetes", str(ROOT / "profiles" / "l20-shared.yaml"), "-o", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    path = variant(tmp_path, "l20-shared", lambda d: d.update(deployments=d["deployments"][:1]))
    assert main(["export", "kubernetes", str(path), "-o", str(out)]) == 0
    assert not (out / "deployment-bge-reranker.yaml").exists() and (out / "deployment-bge-embedding.yaml").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_monitoring_objects_can_be_left_out(tmp_path: Path) -> None:
    """Clusters without prometheus-operator: no ServiceMonitor or PrometheusRule to refuse."""
    path = variant(tmp_path, "cpu-only", lambda d: d.update(kubernetes={"monitoring": False}))
    kinds = {m["kind"] for m in build(path)[1]}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"} and "Deployment" in kinds
