"""`apply`, `status`, `logs` and `down` with `--backend kubernetes`, end to end through the CLI.

A real cluster cannot run here: the CLI loads a kubeconfig that points the real `kubernetes`
client at the stubbed API server of k8s_apiserver.py (real HTTP on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from k8s_apiserver import FakeApiServer, running
from k8s_manifests import ROOT

from tei_manager.cli.app import main


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    with running(server) as url:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": url}}],
            "users": [{"name": "stub", "user": {"token": "stub-token"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.chdir(ROOT)
        yield server


def test_apply_status_logs_down(kubeconfig: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    server = kubeconfig
    assert main(["apply", "profiles/l20-shared.yaml", "--backend", "kubernetes", "--timeout", "30"]) == 0
    out = capsys.readouterr().out
    assert "applied l20-shared" in out and "kubernetes backend" in out
    assert ("Deployment", "l20-shared", "bge-embedding") in server.objects

    assert main(["status", "l20-shared", "--backend", "kubernetes", "--json"]) == 0
    rows = yaml.safe_load(capsys.readouterr().out)
    assert len(rows) == 2 and {r["state"] for r in rows} == {"running"}

    pod = next(name for (kind, _, name) in server.objects if kind == "Pod")
    assert main(["logs", pod, "--backend", "kubernetes"]) == 0
    assert f"{pod} line 1" in capsys.readouterr().out

    assert main(["apply", "profiles/l20-shared.yaml", "--backend", "kubernetes"]) == 0
    assert "nothing to change" in capsys.readouterr().out

    assert main(["down", "l20-shared", "--backend", "kubernetes"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "namespace and the model cache claim are kept" in out
    assert {kind for (kind, _, _) in server.objects} == {"Namespace", "PersistentVolumeClaim"}


def test_no_cluster_configured_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["status", "--backend", "kubernetes"]) != 0
    err = capsys.readouterr().err
    assert "no Kubernetes cluster configured" in err and "--kube-context" in err and "Traceback" not in err


def test_backend_auto_never_reaches_a_cluster(kubeconfig: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A kubeconfig lying around is not a request to use it: only `--backend kubernetes` does."""
    main(["status", "--json"])
    capsys.readouterr()
    assert kubeconfig.requests == []


def test_plan_for_the_cluster_needs_no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.chdir(ROOT)
    assert main(["plan", "profiles/l20-shared.yaml", "--backend", "kubernetes", "--json"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["backend"] == "kubernetes"
    assert [(i["bind"], i["host_port"]) for i in plan["instances"]] == [
        ("bge-embedding.l20-shared.svc", 8080), ("bge-reranker.l20-shared.svc", 8080)]


def test_the_gateway_in_the_cluster_routes_to_the_services(kubeconfig: FakeApiServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What the gateway pod runs: `serve --backend kubernetes` plans from the profile (no API call)
    and reaches each deployment through its Service."""
    from tei_manager.cli.serve_cmd import load_for_gateway
    from tei_manager.gateway.config import routes_from_plan

    monkeypatch.setenv("TEI_API_KEY", "k-test")
    _profile, plan, keys = load_for_gateway(ROOT / "profiles" / "l20-shared.yaml", "kubernetes", {})
    replicas = sorted(url for route in routes_from_plan(plan) for url in route.replicas)
    assert replicas == ["http://bge-embedding.l20-shared.svc:8080", "http://bge-reranker.l20-shared.svc:8080"]
    assert [list(k) for k in keys.values()] == [["k-test"]]  # from the env the Secret fills
    assert kubeconfig.requests == []
