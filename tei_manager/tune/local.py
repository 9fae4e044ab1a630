"""A `TrialTarget` that runs the fallback worker as a local process on a loopback port.

It is what the process backend does for a `runtime: fallback` deployment, reduced to what a trial
needs: the model directory, the settings under trial as the worker's flags, 127.0.0.1 and a free
port, and the peak memory of the process (RSS on CPU, NVML per process on a GPU).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from .memory import NvmlPeak, PeakProbe, RssPeak
from .target import Exit, Settings, StartFailed

#: Settings keys (the profile's `tuning:` names) -> worker flags. TEI spells them the same way.
FLAGS = {
    "max_batch_tokens": "--max-batch-tokens",
    "max_batch_requests": "--max-batch-requests",
    "max_concurrent_requests": "--max-concurrent-requests",
    "max_client_batch_size": "--max-client-batch-size",
    "dtype": "--dtype",
    "forward_workers": "--forward-workers",
}
_LOG_TAIL = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def settings_to_flags(settings: Settings) -> list[str]:
    flags: list[str] = []
    for key, value in settings.items():
        if key not in FLAGS:
            raise ValueError(f"the fallback worker has no setting {key!r}; known: {sorted(FLAGS)}")
        flags += [FLAGS[key], str(value)]
    return flags


class LocalWorkerInstance:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: IO[bytes], probe: PeakProbe) -> None:
        self.proc = proc
        self.port = port
        self._log = log
        self._probe = probe

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> Mapping[str, str]:
        return {}  # started without an API key: nothing to present

    def peak_memory_bytes(self) -> int | None:
        return self._probe.peak_bytes()

    def log_tail(self) -> str:
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - _LOG_TAIL))
        return self._log.read().decode("utf-8", "replace")

    def exited(self) -> Exit | None:
        code = self.proc.poll()
        if code is None:
            return None
        tail = self.log_tail()
        # SIGKILL from outside is almost always the kernel's OOM killer (or a container's memory limit).
        if code == -signal.SIGKILL or "out of memory" in tail.lower():
            return Exit("oom", f"exit {code}; {tail.strip().splitlines()[-1] if tail.strip() else ''}")
        return Exit("crash", f"exit {code}; {tail.strip().splitlines()[-1] if tail.strip() else ''}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._probe.close()
        self._log.close()


class LocalWorkerTarget:
    """Starts ``python -m fallback_worker --model-id MODEL ...`` with the settings under trial.

    ``device`` is ``cpu`` or ``cuda:N``; on CUDA the peak is GPU memory per process (NVML).
    ``extra_args`` come first and the settings after them, so the settings win.
    """

    def __init__(self, model: str | Path, *, device: str = "cpu", extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, ready_timeout: float = 180.0) -> None:
        self.model = str(model)
        self._device = device
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout

    @property
    def device(self) -> str:
        if self._device.startswith("cuda"):
            return _gpu_name(self._gpu_index())
        return "cpu"

    def _gpu_index(self) -> int:
        _, _, index = self._device.partition(":")
        return int(index or 0)

    def command(self, settings: Settings, port: int) -> list[str]:
        return [
            sys.executable, "-m", "fallback_worker", "--model-id", self.model, "--hostname", "127.0.0.1",
            "--port", str(port), "--device", self._device, *self.extra_args, *settings_to_flags(settings),
        ]

    def start(self, settings: Settings) -> LocalWorkerInstance:
        port = free_port()
        log = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the instance, closed by stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        proc = subprocess.Popen(self.command(settings, port), stdout=log, stderr=subprocess.STDOUT, env=env)
        probe: PeakProbe = (
            NvmlPeak({proc.pid}, self._gpu_index()) if self._device.startswith("cuda") else RssPeak(proc.pid)
        )
        instance = LocalWorkerInstance(proc, port, log, probe)
        deadline = time.monotonic() + self.ready_timeout
        # The worker warms up before it binds its port: the port opening means ready.
        while not _port_open(port):
            ended = instance.exited()
            if ended is not None:
                instance.stop()
                raise StartFailed(ended.reason, ended.detail)
            if time.monotonic() > deadline:
                tail = instance.log_tail()
                instance.stop()
                raise StartFailed("timeout", f"not ready after {self.ready_timeout:.0f}s; {tail[-300:]}")
            time.sleep(0.1)
        return instance


def _gpu_name(index: int) -> str:
    """The GPU's marketing name from NVML (untested here: no NVIDIA GPU on this host)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
        return name.decode() if isinstance(name, bytes) else str(name)
    finally:
        pynvml.nvmlShutdown()
