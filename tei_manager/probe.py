"""Reads the host facts the planner needs: GPUs (NVML) and the Docker Engine.

Never raises for a missing piece: a host without an NVIDIA driver, or without Docker, is a normal
host.  What could not be read is recorded (`HostFacts.nvml_error`, `DockerFact.error`) so that
`plan` can say why, and the planner can choose the fallback worker or CPU.

    probe_host(docker_url=None) -> HostFacts
    probe_gpus() -> (tuple[GpuFact, ...], error or None)
    probe_docker(docker_url=None, timeout_s=3.0) -> DockerFact
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any, Literal

from tei_manager.core.facts import DockerFact, GpuFact, GpuProcess, HostFacts, normalize_arch

MIB = 1024 * 1024
#: Docker calls during probing; a daemon that takes longer is reported as unreachable.
DOCKER_TIMEOUT_S = 3.0


def probe_host(docker_url: str | None = None, *, docker_timeout_s: float = DOCKER_TIMEOUT_S) -> HostFacts:
    """Everything at once: GPUs, Docker, CPU count and memory of this machine."""
    gpus, nvml_error = probe_gpus()
    return HostFacts(
        gpus=gpus,
        docker=probe_docker(docker_url, timeout_s=docker_timeout_s),
        nvml_error=nvml_error,
        cpu_count=_cpu_count(),
        memory_bytes=_memory_bytes(),
        cpu_arch=cpu_arch(),
        origin="live",
    )


def cpu_arch() -> Literal["x86_64", "arm64"]:
    """This machine's CPU architecture (images are built per architecture)."""
    try:
        return normalize_arch(platform.machine())
    except ValueError:
        return "x86_64"  # an architecture TEI has no image for: x86_64 images simply will not run


def probe_gpus() -> tuple[tuple[GpuFact, ...], str | None]:
    """List GPUs through NVML.  Returns ((), reason) when NVML or the driver is unavailable."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return (), "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError subclasses, or OSError from a broken library
        return (), _nvml_reason(exc)
    try:
        count = pynvml.nvmlDeviceGetCount()
        return tuple(_gpu(pynvml, i) for i in range(count)), (None if count else "NVML lists no GPU")
    except Exception as exc:  # noqa: BLE001 - a driver failing mid-read is "no GPU facts", with the reason
        return (), _nvml_reason(exc)
    finally:
        with contextlib.suppress(Exception):  # shutting down a half-initialised NVML may fail too
            pynvml.nvmlShutdown()


def gpu_memory_by_pid() -> dict[int, int]:
    """MiB of GPU memory per host pid (NVML's per-process figures); empty without an NVIDIA driver."""
    usage: dict[int, int] = {}
    for gpu in probe_gpus()[0]:
        for proc in gpu.processes:
            usage[proc.pid] = usage.get(proc.pid, 0) + proc.used_mib
    return usage


def _nvml_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "LibraryNotFound" in type(exc).__name__ or "not found" in text.lower():
        return f"{text} - no NVIDIA driver on this host"
    return text


def _gpu(nvml: Any, index: int) -> GpuFact:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return GpuFact(
        index=index,
        name=name,
        uuid=_optional(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
        total_mib=int(memory.total // MIB),
        free_mib=int(memory.free // MIB),
        compute_capability=(int(major), int(minor)),
        utilization_pct=_optional(lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
        processes=_processes(nvml, handle),
    )


def _processes(nvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
    procs = _optional(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
    out = []
    for proc in procs:
        used = getattr(proc, "usedGpuMemory", None)  # None when the driver hides it (containers, WDDM)
        pid = int(proc.pid)
        out.append(GpuProcess(pid=pid, used_mib=int(used // MIB) if used else 0,
                              name=_optional(lambda pid=pid: _text(nvml.nvmlSystemGetProcessName(pid))) or ""))
    return tuple(out)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional(read: Any) -> Any:
    """Fields some drivers or GPUs do not support are left None rather than failing the probe."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends: an optional field
        return None


def probe_docker(docker_url: str | None = None, *, timeout_s: float = DOCKER_TIMEOUT_S) -> DockerFact:
    """Ask the Docker Engine for its version and runtimes, within `timeout_s`."""
    try:
        import docker
    except ImportError:  # pragma: no cover - docker is a dependency
        return DockerFact(reachable=False, error="the docker Python SDK is not installed (pip install docker)")
    client = None
    try:
        if docker_url:
            client = docker.DockerClient(base_url=docker_url, timeout=int(max(1, timeout_s)))
        else:
            client = docker.from_env(timeout=int(max(1, timeout_s)))
        version = client.version()
        info = client.info()
    except Exception as exc:  # noqa: BLE001 - DockerException, requests errors or OSError: all mean "unreachable"
        return DockerFact(reachable=False, error=_docker_reason(exc, docker_url))
    finally:
        if client is not None:
            with contextlib.suppress(Exception):  # closing a half-open client is best effort
                client.close()
    runtimes = info.get("Runtimes") or {}
    # `--gpus` needs the NVIDIA Container Toolkit: a registered `nvidia` runtime, or CDI specs for it.
    cdi = any("nvidia" in str(d) for d in (info.get("CDISpecDirs") or [])) and bool(info.get("DiscoveredDevices"))
    return DockerFact(reachable=True, version=version.get("Version"), nvidia_runtime="nvidia" in runtimes or cdi)


def _docker_reason(exc: BaseException, docker_url: str | None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = docker_url or os.environ.get("DOCKER_HOST") or "the default socket"
    return f"{text[:200]} (at {where})"


def _cpu_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def host_facts(gpus: str | None = None, *, docker: bool | None = None, docker_url: str | None = None) -> HostFacts:
    """Host facts as the CLI options describe them (shared by `plan` and `apply`).

    `gpus` given: a described host (no probing of GPUs); its Docker Engine is assumed present with
    the NVIDIA runtime unless `docker` is False.  `gpus` None: this host, probed; `docker` True or
    False overrides what the probe finds.  Raises ValueError for an unreadable `gpus` string.
    """
    from tei_manager.core.facts import parse_gpu_specs

    if gpus is not None:
        described = parse_gpu_specs(gpus)
        if docker is False:
            engine = DockerFact(reachable=False, error="--no-docker")
        else:
            engine = DockerFact(reachable=True, nvidia_runtime=True, version=None)
        return HostFacts(gpus=described, docker=engine, origin="described",
                         nvml_error=None if described else "no GPU given in --gpus")
    gpu_facts, nvml_error = probe_gpus()
    if docker is False:
        engine = DockerFact(reachable=False, error="--no-docker")
    else:
        engine = probe_docker(docker_url)
        if docker is True:  # plan as if TEI containers can run here, whatever the probe found
            engine = DockerFact(reachable=True, nvidia_runtime=True, version=engine.version)
    return HostFacts(gpus=gpu_facts, docker=engine, nvml_error=nvml_error, cpu_count=_cpu_count(),
                     memory_bytes=_memory_bytes(), cpu_arch=cpu_arch(), origin="live")
