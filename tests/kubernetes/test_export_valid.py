"""Every object `export kubernetes` writes, for every profile in profiles/, is valid for the cluster:
built-in kinds against the Kubernetes OpenAPI schemas of the oldest and newest supported versions
(kubernetes-validate, strict: unknown fields are errors), custom resources against the vendored
CRDs (prometheus-operator v0.93.0, KEDA v2.20.1), and the PrometheusRule's rules through promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_manifests import (
    K8S_VERSIONS,
    PROFILES,
    ROOT,
    is_custom,
    rendered,
    validate_custom,
)

from tei_manager.cli.app import main
from tei_manager.export.writer import DEFAULT_ALERTS

IDS = [p.stem for p in PROFILES]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("profile", PROFILES, ids=IDS)
def test_builtin_objects_validate_against_the_kubernetes_schema(profile: Path, version: str) -> None:
    checked = 0
    for manifest in rendered(profile):
        if is_custom(manifest):
            continue
        kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("profile", PROFILES, ids=IDS)
def test_custom_resources_validate_against_their_crds(profile: Path) -> None:
    kinds = []
    for manifest in rendered(profile):
        if is_custom(manifest):
            validate_custom(manifest)
            kinds.append(manifest["kind"])
    assert {"ServiceMonitor", "PrometheusRule"} <= set(kinds)


def test_an_invalid_custom_resource_is_caught() -> None:
    """The CRD check is not vacuous: a misspelt field fails it."""
    monitor = next(m for m in rendered(PROFILES[0]) if m["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(Exception, match="intervall"):
        validate_custom(monitor)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize("profile", PROFILES, ids=IDS)
def test_prometheus_rule_passes_promtool(profile: Path, tmp_path: Path) -> None:
    rule = next(m for m in rendered(profile) if m["kind"] == "PrometheusRule")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_carries_the_shipped_alerts() -> None:
    """Read from deploy/prometheus/alerts.yml, not a copy: every alert there is in the rule."""
    shipped = yaml.safe_load(DEFAULT_ALERTS.read_text())
    rule = next(m for m in rendered(PROFILES[0]) if m["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == shipped["groups"]


def test_export_writes_a_kustomize_directory(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    assert main(["export", "kubernetes", str(ROOT / "profiles" / "l20-shared.yaml"), "-o", str(out)]) == 0
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "l20-shared"
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in out.glob("*.yaml")} - {"kustomization.yaml"}
    for name in listed:
        manifest = yaml.safe_load((out / name).read_text())
        if not is_custom(manifest):
            kubernetes_validate.validate(manifest, K8S_VERSIONS[-1], strict=True)
