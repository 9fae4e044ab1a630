"""Peak memory of a trial instance: resident memory on CPU, GPU memory per process on a GPU.

`RssPeak` is for local processes, `CgroupPeak` for containers on CPU, `NvmlPeak` for anything on a GPU.

On CPU the kernel keeps the high-water mark itself (``VmHWM`` in ``/proc/PID/status``), so the
warm-up peak, which the worker reaches before it opens its port, is never missed. NVML only
reports what a process holds *now*, so on a GPU a thread samples it from the moment the process
starts until it stops and keeps the largest figure.

The NVML path cannot run on a host without an NVIDIA GPU and is not exercised by the test suite.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Protocol


class PeakProbe(Protocol):
    def peak_bytes(self) -> int | None: ...

    def close(self) -> None: ...


def _status_kib(pid: int, field: str, proc: Path = Path("/proc")) -> int | None:
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssPeak:
    """The process's resident-memory high-water mark, read from ``/proc`` (Linux).

    Reads the last figure it saw once the process is gone, so it can be asked after a crash.
    """

    def __init__(self, pid: int, proc: Path = Path("/proc")) -> None:
        self.pid = pid
        self._proc = proc
        self._last: int | None = None

    def peak_bytes(self) -> int | None:
        kib = _status_kib(self.pid, "VmHWM", self._proc)
        if kib is not None:
            self._last = kib * 1024
        return self._last

    def close(self) -> None:
        self.peak_bytes()


class CgroupPeak:
    """A container's memory high-water mark from its cgroup directory: ``memory.peak`` (cgroup v2,
    Linux 5.19+) or ``memory.max_usage_in_bytes`` (v1). For a backend running Docker on CPU; like
    RssPeak it keeps the last figure, so it can be asked after the container is gone."""

    FILES = ("memory.peak", "memory.max_usage_in_bytes")

    def __init__(self, cgroup_dir: Path) -> None:
        self.cgroup_dir = cgroup_dir
        self._last: int | None = None

    def peak_bytes(self) -> int | None:
        for name in self.FILES:
            try:
                self._last = int((self.cgroup_dir / name).read_text().split()[0])
                break
            except (OSError, ValueError, IndexError):
                continue
        return self._last

    def close(self) -> None:
        self.peak_bytes()


def cgroup_dir_of(pid: int, proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")) -> Path | None:
    """The cgroup directory of a process (a container's main process: its container's cgroup).

    cgroup v2 has one line ``0::/path``; v1 has one per controller and the memory one is wanted.
    None when the process is gone or its cgroup is not visible from here (another namespace).
    """
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and (root / path.lstrip("/")).is_dir():
            return root / path.lstrip("/")
        if "memory" in controllers.split(",") and (root / "memory" / path.lstrip("/")).is_dir():
            return root / "memory" / path.lstrip("/")
    return None


class NvmlPeak:
    """The most GPU memory the process (and its children) held, sampled every ``interval`` seconds.

    Untested here: this host has no NVIDIA GPU.
    """

    def __init__(self, pids: set[int], gpu_index: int, interval: float = 0.1) -> None:
        import pynvml

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
        self._pids = pids
        self._peak: int | None = None
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="nvml-peak", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        nvml = self._nvml
        used = 0
        seen = False
        for getter in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                processes = getter(self._handle)
            except nvml.NVMLError:
                continue
            for p in processes:
                if p.pid in self._pids and p.usedGpuMemory is not None:
                    used += int(p.usedGpuMemory)
                    seen = True
        if seen:
            self._peak = max(self._peak or 0, used)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def peak_bytes(self) -> int | None:
        return self._peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()
