"""deploy/: the alert rules, the Prometheus example and the Grafana dashboard use metrics the
gateway really exports, and promtool accepts them (and their unit tests) when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tei_manager.metrics import (
    GPU_MEMORY_TOTAL,
    GPU_MEMORY_USED,
    GPU_UTILIZATION,
    GatewayMetrics,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
# Names a PromQL expression may use that are not the gateway's (cAdvisor, where it runs).
FOREIGN = {"container_oom_events_total"}


def exported_names() -> set[str]:
    metrics = GatewayMetrics(CollectorRegistry(), gpu_collector=False)
    names = {GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_UTILIZATION}
    for family in metrics.registry.collect():
        names.add(family.name)
        names |= {family.name + s for s in ("_total", "_bucket", "_count", "_sum", "_created")}
    return names


def metric_names(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b(tei_manager_[a-z_]+|container_[a-z_]+)\b", expr)}


def rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed_and_cover_the_seed_thresholds() -> None:
    by_name = {r["alert"]: r for r in rules()}
    for rule in by_name.values():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]
    assert "> 0.85" in by_name["TeiGpuMemoryHigh"]["expr"] and by_name["TeiGpuMemoryHigh"]["for"] == "5m"
    assert "histogram_quantile(0.99" in by_name["TeiLatencyP99High"]["expr"]
    assert "> 0.1" in by_name["TeiLatencyP99High"]["expr"]
    assert "[1h]" in by_name["TeiInstanceOomRestarts"]["expr"] and ">= 1" in by_name["TeiInstanceOomRestarts"]["expr"]


def test_rules_and_dashboard_use_exported_metrics() -> None:
    known = exported_names() | FOREIGN
    exprs = [r["expr"] for r in rules()]
    dashboard = json.loads((DEPLOY / "grafana" / "tei-manager.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= known, used - known


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_rules_config_and_rule_tests() -> None:
    prom = DEPLOY / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts.test.yml"]):
        result = subprocess.run([PROMTOOL, *args], cwd=prom, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
