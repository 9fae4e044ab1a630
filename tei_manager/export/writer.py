"""Turn rendered manifests into a kustomize directory, and read the inputs rendering needs.

    build(path, gpus=None, alerts=None) -> (ClusterPlan, [manifest])    profile file -> objects
    write_directory(manifests, out_dir) -> [written paths]              one file per object + kustomization.yaml
    to_yaml(manifest) -> str                                             stable YAML (golden files, apply logs)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tei_manager.core.facts import GpuFact
from tei_manager.errors import ProfileError
from tei_manager.export.cluster import ClusterPlan, plan_for_cluster
from tei_manager.export.kubernetes import Manifest, render

#: The alert rules shipped for Prometheus; the PrometheusRule carries the same groups.
DEFAULT_ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the profile in its ConfigMap stays readable)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def to_yaml(manifest: Any) -> str:
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000)


def alert_groups(path: Path | None = None) -> list[dict[str, Any]]:
    """The rule groups of a Prometheus rules file (default: deploy/prometheus/alerts.yml)."""
    path = path or DEFAULT_ALERTS
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read the alert rules ({exc.strerror})", where=str(path),
                           fix="pass --alerts FILE (a Prometheus rules file), or --no-alerts") from None
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise ProfileError("not a Prometheus rules file (no `groups` list)", where=str(path),
                           fix="pass a file shaped like deploy/prometheus/alerts.yml")
    return groups


def build(path: str | Path, *, gpus: Sequence[GpuFact] | None = None,
          alerts: Sequence[dict[str, Any]] | None = None) -> tuple[ClusterPlan, list[Manifest]]:
    """Profile file -> the cluster plan and every object (the export and the backend both call this)."""
    from tei_manager.profiles import load_profile

    profile = load_profile(path)
    cluster = plan_for_cluster(profile, source=str(path), gpus=gpus)
    groups = alert_groups() if alerts is None else alerts
    return cluster, render(profile, cluster, profile_text=Path(path).read_text(), alert_groups=groups)


def file_name(manifest: Manifest) -> str:
    return f"{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"


def write_directory(manifests: Sequence[Manifest], out_dir: str | Path) -> list[Path]:
    """One YAML file per object and a kustomization.yaml listing them in apply order.

    Files this export wrote before and no longer renders are removed (a directory is the whole
    profile); other files in the directory are left alone."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [file_name(m) for m in manifests]
    kustomization = out / "kustomization.yaml"
    if kustomization.exists():
        old = yaml.safe_load(kustomization.read_text()) or {}
        for stale in set(old.get("resources") or ()) - set(names):
            if "/" not in stale:
                (out / stale).unlink(missing_ok=True)
    written = []
    for name, manifest in zip(names, manifests, strict=True):
        (out / name).write_text(to_yaml(manifest))
        written.append(out / name)
    namespace = next((m["metadata"]["name"] for m in manifests if m["kind"] == "Namespace"), None)
    kustom: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        kustom["namespace"] = namespace
    kustom["resources"] = names
    kustomization.write_text(to_yaml(kustom))
    written.append(kustomization)
    return written
