"""Prometheus metrics of the gateway, behind typed methods.

The registry is injected (tests and several apps in one process never share state).  Metric
names start with `tei_manager_`; the TUI (`tei_manager.tui.gateway_stats`), the alert rules in
deploy/prometheus/alerts.yml and the Grafana dashboard read these names, so renaming one is a
breaking change for all three.

GPU series come from NVML at scrape time.  Without NVML (no driver, no GPU) there are simply no
GPU series: nothing fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "tei_manager_gateway"

# Fine around 100 ms, where the P99 alert sits, so histogram_quantile lands in a narrow bucket.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09,
    0.1, 0.11, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)
GPU_MEMORY_USED = "tei_manager_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "tei_manager_gpu_memory_total_bytes"
GPU_UTILIZATION = "tei_manager_gpu_utilization_ratio"
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class GatewayMetrics:
    """Every series the gateway exports.  Label values are tenant/model/instance names, never keys."""

    def __init__(self, registry: CollectorRegistry, *, gpu_collector: bool = True) -> None:
        self.registry = registry
        self._requests = Counter(
            f"{PREFIX}_requests", "Requests answered, by tenant, model, route, instance and HTTP status.",
            ["tenant", "model", "route", "instance", "status"], registry=registry,
        )
        self._latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "Time from request received to response ready.",
            ["tenant", "model", "instance"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self._tokens = Counter(
            f"{PREFIX}_tokens", "Tokens counted by the upstream (x-compute-tokens), or the gateway's estimate.",
            ["tenant", "model"], registry=registry,
        )
        self._queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds", "Time a request waited for a slot before it was sent upstream.",
            ["tenant", "model", "priority"], buckets=WAIT_BUCKETS, registry=registry,
        )
        self._rejections = Counter(
            f"{PREFIX}_rejections", "Requests refused by the gateway, by reason.",
            ["tenant", "model", "reason"], registry=registry,
        )
        self._retries = Counter(
            f"{PREFIX}_upstream_retries", "Requests retried on another replica after a failure.",
            ["model", "instance"], registry=registry,
        )
        self._in_flight = Gauge(
            f"{PREFIX}_in_flight", "Requests admitted and not yet answered, per model.", ["model"], registry=registry,
        )
        self._waiting = Gauge(
            f"{PREFIX}_waiting", "Requests waiting for a slot, per model.", ["model"], registry=registry,
        )
        self._up = Gauge(
            f"{PREFIX}_instance_up", "1 when the gateway's health probe reaches the instance.",
            ["instance", "model", "tenant"], registry=registry,
        )
        self._restarts = Counter(
            f"{PREFIX}_instance_restarts", "Instance restarts recorded by the supervisor, by reason (oom, crash).",
            ["instance", "reason"], registry=registry,
        )
        self._reloads = Counter(
            f"{PREFIX}_reloads", "Profile reloads, by result (ok, error).", ["result"], registry=registry,
        )
        if gpu_collector:
            registry.register(NvmlCollector())

    # ---- per request ---------------------------------------------------------------------------
    def request_done(self, *, tenant: str, model: str, route: str, instance: str, status: int, seconds: float) -> None:
        self._requests.labels(tenant, model, route, instance, str(status)).inc()
        self._latency.labels(tenant, model, instance).observe(seconds)

    def tokens(self, *, tenant: str, model: str, count: int) -> None:
        if count > 0:
            self._tokens.labels(tenant, model).inc(count)

    def queue_wait(self, *, tenant: str, model: str, priority: str, seconds: float) -> None:
        self._queue_wait.labels(tenant, model, priority).observe(seconds)

    def rejected(self, *, tenant: str, model: str, reason: str) -> None:
        self._rejections.labels(tenant, model, reason).inc()

    def retried(self, *, model: str, instance: str) -> None:
        self._retries.labels(model, instance).inc()

    def pool_load(self, *, model: str, in_flight: int, waiting: int) -> None:
        self._in_flight.labels(model).set(in_flight)
        self._waiting.labels(model).set(waiting)

    # ---- per instance --------------------------------------------------------------------------
    def instance_up(self, *, instance: str, model: str, tenant: str, up: bool) -> None:
        self._up.labels(instance, model, tenant).set(1 if up else 0)

    def instance_restarted(self, *, instance: str, reason: str) -> None:
        """Called by whoever restarts instances (the supervisor) or sees them come back."""
        self._restarts.labels(instance, reason).inc()

    def forget_instance(self, *, instance: str, model: str, tenant: str) -> None:
        with contextlib.suppress(KeyError):  # never reported, nothing to forget
            self._up.remove(instance, model, tenant)

    def reloaded(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NvmlCollector(Collector):
    """GPU memory and utilisation read from NVML when Prometheus scrapes."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._failed = False

    def _init(self) -> Any:
        if self._nvml is None and not self._failed:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as exc:  # noqa: BLE001 - NVML is optional; any failure to load it means "no GPU"
                # ImportError without the library, pynvml.NVMLError without a driver (a class that
                # exists only once the import worked): no GPU series, by design.
                self._failed = True
                log.info("NVML unavailable, no GPU metrics: %s", exc)
        return self._nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self._init()
        if nvml is None:
            return
        used = GaugeMetricFamily(GPU_MEMORY_USED, "GPU memory in use.", labels=["gpu", "name"])
        total = GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU memory in all.", labels=["gpu", "name"])
        util = GaugeMetricFamily(
            GPU_UTILIZATION, "Share of time a kernel ran (NVML utilisation).", labels=["gpu", "name"]
        )
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                labels = [str(index), name]
                used.add_metric(labels, float(memory.used))
                total.add_metric(labels, float(memory.total))
                try:
                    utilisation = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
                except Exception:  # noqa: BLE001 - some GPUs (MIG slices) do not report utilisation
                    continue
                util.add_metric(labels, utilisation)
        except Exception as exc:  # noqa: BLE001 - any NVML failure drops the GPU series, never the scrape
            log.warning("reading NVML failed: %s", exc)
            return
        yield used
        yield total
        yield util

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collected lazily; describing would call NVML at registration
