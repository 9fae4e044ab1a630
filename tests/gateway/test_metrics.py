"""GPU series from NVML and restart counts from the supervisor's event log.

No GPU exists on the test hosts, so the GPU-present case uses a stand-in `pynvml` module that
answers like NVML does; the GPU-absent case is the real library failing to find a driver.
"""

from __future__ import annotations

import sys
import types

import pytest
from prometheus_client import CollectorRegistry

from tei_manager.gateway.events import RestartFeed
from tei_manager.metrics import GatewayMetrics
from tei_manager.state import RecordedEvent


def test_no_nvml_means_no_gpu_series_and_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("pynvml")

    def init() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    broken.nvmlInit = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    text = GatewayMetrics(CollectorRegistry()).render().decode()
    assert "tei_manager_gpu_" not in text
    assert "# TYPE tei_manager_gateway_requests_total counter" in text


def test_gpu_memory_and_utilisation_series(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetName = lambda h: b"Tesla T4"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=14 * 2**30, total=16 * 2**30)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=73)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    labels = {"gpu": "0", "name": "Tesla T4"}
    assert registry.get_sample_value("tei_manager_gpu_memory_used_bytes", labels) == 14 * 2**30
    assert registry.get_sample_value("tei_manager_gpu_memory_total_bytes", labels) == 16 * 2**30
    assert registry.get_sample_value("tei_manager_gpu_utilization_ratio", labels) == 0.73


def test_supervisor_restarts_are_counted_with_their_reason() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), gpu_collector=False)
    feed = RestartFeed("p", metrics, clock=lambda: 100.0)
    feed.consume([
        RecordedEvent(50.0, "p", "a-0", "restarted", "old news"),
        RecordedEvent(101.0, "p", "a-0", "exited", "killed by the out-of-memory killer"),
        RecordedEvent(102.0, "p", "a-0", "restarting", ""),
        RecordedEvent(103.0, "p", "a-0", "restarted", "restart 1 by the supervisor"),
        RecordedEvent(104.0, "p", "b-0", "exited", "exit code 1"),
        RecordedEvent(105.0, "p", "b-0", "restarted", "restart 1 by the supervisor"),
        RecordedEvent(106.0, "p", "b-0", "engine-restarted", "restarted by the engine (2 in all)"),
    ])
    text = metrics.render().decode()
    assert 'tei_manager_gateway_instance_restarts_total{instance="a-0",reason="oom"} 1.0' in text
    assert 'tei_manager_gateway_instance_restarts_total{instance="b-0",reason="crash"} 2.0' in text
    assert 'reason="crash",instance="a-0"' not in text and 'instance="a-0",reason="crash"' not in text
