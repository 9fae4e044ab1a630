"""The Kubernetes backend's apply, status, logs, rollback and down.

A real cluster cannot run here: these tests use the real `kubernetes` client over real HTTP
against a stubbed API server (tests/kubernetes/k8s_apiserver.py) that answers with the API's
shapes.  What is checked is the backend's logic: it applies exactly what the export renders,
by server-side apply, gates on the rollout, rolls back, and reads state from the objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_apiserver import FakeApiServer, running
from k8s_manifests import ROOT
from kubernetes import client

from tei_manager.backends.kubernetes import KubernetesBackend, plan, rollout_pending
from tei_manager.errors import ApplyError
from tei_manager.export.writer import build
from tei_manager.orchestrator import apply, down, status
from tei_manager.profiles import load_profile

PROFILE = ROOT / "profiles" / "l20-shared.yaml"


@pytest.fixture
def cluster() -> Iterator[tuple[FakeApiServer, KubernetesBackend]]:
    server = FakeApiServer()
    with running(server) as url:
        configuration = client.Configuration()
        configuration.host = url
        backend = KubernetesBackend(client.ApiClient(configuration), sleep=lambda _s: None)
        yield server, backend
        backend.close()


def cluster_plan(path: Path = PROFILE):
    return plan(load_profile(path), str(path))


def test_apply_server_side_applies_exactly_what_export_renders(cluster) -> None:
    server, backend = cluster
    result = apply(cluster_plan(), backend, timeout_s=30)
    assert result.changed and {a.kind for a in result.actions} == {"create"}
    rendered = build(PROFILE)[1]
    for manifest in rendered:
        meta = manifest["metadata"]
        stored = server.objects[(manifest["kind"], "" if manifest["kind"] == "Namespace" else meta["namespace"],
                                 meta["name"])]
        stored = {k: v for k, v in stored.items() if k != "status"}
        stored["metadata"] = {k: v for k, v in stored["metadata"].items() if k != "generation"}
        assert stored == manifest
    patches = [r for r in server.requests if r[0] == "PATCH"]
    assert len(patches) == len(rendered) and all(c == "application/apply-patch+yaml" for _, _, c in patches)
    # Status reads pods back from the cluster: node and GPU share, restarts, readiness.
    rows = status(backend, "l20-shared", probe_health=False)
    assert {r.state for r in rows} == {"running"} and len(rows) == 2
    assert all("NVIDIA-L20 (nvidia.com/gpu)" in r.bind for r in rows)
    assert {r.model for r in rows} == {"BAAI/bge-m3", "BAAI/bge-reranker-v2-m3"}


def test_apply_again_keeps_what_did_not_change(cluster) -> None:
    _server, backend = cluster
    apply(cluster_plan(), backend, timeout_s=30)
    again = apply(cluster_plan(), backend, timeout_s=30)
    assert not again.changed and {a.kind for a in again.actions} == {"keep"}


def test_a_failed_rollout_rolls_back_to_the_previous_spec(cluster, tmp_path: Path) -> None:
    server, backend = cluster
    apply(cluster_plan(), backend, timeout_s=30)
    before = server.objects[("Deployment", "l20-shared", "bge-reranker")]["spec"]
    changed = tmp_path / "l20-shared.yaml"
    changed.write_text(PROFILE.read_text().replace("max_batch_tokens: 8192 ", "max_batch_tokens: 16384 "))
    server.broken.add("bge-reranker")
    clock = iter(range(0, 10_000, 10))
    backend._clock = lambda: float(next(clock))
    with pytest.raises(ApplyError) as err:
        apply(cluster_plan(changed), backend, timeout_s=30)
    assert "bge-reranker did not become ready" in err.value.what and "CrashLoopBackOff" in err.value.what
    server.broken.clear()
    # The previous spec was applied again (the controller rolls the old pods back out).
    assert server.objects[("Deployment", "l20-shared", "bge-reranker")]["spec"] == before


def test_a_failed_first_apply_removes_what_it_created(cluster) -> None:
    server, backend = cluster
    server.broken.add("bge-embedding")
    clock = iter(range(0, 10_000, 10))
    backend._clock = lambda: float(next(clock))
    with pytest.raises(ApplyError):
        apply(cluster_plan(), backend, timeout_s=30)
    kinds = {k for (k, _, _) in server.objects}
    assert kinds <= {"Namespace", "PersistentVolumeClaim"}


def test_down_deletes_by_label_and_keeps_namespace_and_cache(cluster) -> None:
    server, backend = cluster
    apply(cluster_plan(), backend, timeout_s=30)
    removed = down("l20-shared", backend)
    assert removed
    assert {k for (k, _, _) in server.objects} == {"Namespace", "PersistentVolumeClaim"}
    assert any("labelSelector" in p or True for _, p, _ in server.requests)
    assert status(backend, "l20-shared", probe_health=False) == []


def test_logs_come_from_the_pod(cluster) -> None:
    _server, backend = cluster
    apply(cluster_plan(), backend, timeout_s=30)
    obs = backend.list("l20-shared")[0]
    assert list(backend.logs(obs, tail=10)) == [f"{obs.name} line 1", f"{obs.name} line 2"]


def test_rollout_pending_reads_like_kubectl() -> None:
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}}
    assert rollout_pending(dep) == "1 old pods still terminating"
    dep["status"]["replicas"] = 2
    assert rollout_pending(dep) is None
    dep["metadata"]["generation"] = 3
    assert rollout_pending(dep) == "the controller has not seen the new spec yet"


def test_apply_deletes_deployments_the_profile_no_longer_has(cluster, tmp_path: Path) -> None:
    server, backend = cluster
    apply(cluster_plan(), backend, timeout_s=30)
    smaller = tmp_path / "l20-shared.yaml"
    text = PROFILE.read_text()
    smaller.write_text(text[: text.index("  - name: bge-reranker")] + text[text.index("gateway:"):])
    apply(cluster_plan(smaller), backend, timeout_s=30)
    names = {(kind, name) for (kind, _, name) in server.objects}
    assert ("Deployment", "bge-embedding") in names
    assert not {("Deployment", "bge-reranker"), ("Service", "bge-reranker"),
                ("PodDisruptionBudget", "bge-reranker")} & names
