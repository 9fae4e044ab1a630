"""Host probing never crashes: a host without NVML or Docker is a normal host.

The GPU path runs against a stand-in `pynvml` module (no GPU exists here); the CPU-only path
against whatever this machine really has.
"""

from __future__ import annotations

import sys
import types

import pytest

from tei_manager import probe
from tei_manager.core.facts import HostFacts

MIB = 1024 * 1024


def test_real_nvml_probe_never_raises():
    gpus, error = probe.probe_gpus()
    assert gpus or error  # either GPUs, or the reason there are none


def test_docker_probe_of_a_missing_socket_is_unreachable_not_an_exception(tmp_path):
    fact = probe.probe_docker(f"unix://{tmp_path}/no.sock", timeout_s=1)
    assert not fact.reachable and fact.error and "no.sock" in fact.error


def _fake_nvml(monkeypatch, *, init_error: Exception | None = None) -> None:
    class NVMLError(Exception):
        pass

    mem = types.SimpleNamespace(total=46068 * MIB, free=40000 * MIB, used=6068 * MIB)
    proc = types.SimpleNamespace(pid=4242, usedGpuMemory=2000 * MIB)

    def init():
        if init_error:
            raise init_error

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA L20",
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetMemoryInfo=lambda h: mem,
        nvmlDeviceGetCudaComputeCapability=lambda h: (8, 9),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=37),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [proc] if h == 0 else [],
        nvmlSystemGetProcessName=lambda pid: b"text-embeddings-router",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)


def test_gpus_are_read_from_nvml(monkeypatch):
    _fake_nvml(monkeypatch)
    gpus, error = probe.probe_gpus()
    assert error is None
    assert [(g.index, g.name, g.total_mib, g.free_mib, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA L20", 46068, 40000, (8, 9)), (1, "NVIDIA L20", 46068, 40000, (8, 9))]
    assert gpus[0].uuid == "GPU-0" and gpus[0].utilization_pct == 37
    assert gpus[0].processes[0].pid == 4242 and gpus[0].processes[0].used_mib == 2000
    assert gpus[0].processes[0].name == "text-embeddings-router"


def test_missing_driver_is_a_reason_not_a_crash(monkeypatch):
    class NVMLError_LibraryNotFound(Exception):
        pass

    _fake_nvml(monkeypatch, init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    gpus, error = probe.probe_gpus()
    assert gpus == () and "NVML Shared Library Not Found" in error and "no NVIDIA driver" in error


def test_host_facts_from_options(monkeypatch):
    monkeypatch.setattr(probe, "probe_gpus", lambda: ((), "no driver"))
    monkeypatch.setattr(probe, "probe_docker", lambda *a, **k: pytest.fail("--gpus must not probe Docker"))
    described = probe.host_facts("0:NVIDIA L20:46068MiB:8.9")
    assert described.origin == "described" and described.docker.reachable and described.docker.nvidia_runtime
    assert probe.host_facts("0:L20:46068:8.9", docker=False).docker.reachable is False
    live = probe.host_facts(None, docker=False)
    assert isinstance(live, HostFacts) and live.origin == "live" and live.nvml_error == "no driver"
    assert live.docker.error == "--no-docker"
    with pytest.raises(ValueError):
        probe.host_facts("nonsense")
