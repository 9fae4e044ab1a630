"""Process backend: the fallback worker as local processes, for hosts without Docker.

Each instance is one `tei-fallback-worker` process started in its own session (so it outlives
the CLI that started it), listening on the plan's bind address and port itself.  What a
container engine would remember is written to a record in the profile's state directory
(tei_manager.state): pid, the process's start time (to recognise a reused pid), the spec hash,
the full plan and the log file.  Records are mode 0600 because the plan may carry environment
values the worker needs on restart.

Only the `fallback` runtime can run here: TEI is shipped as container images.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tei_manager.backends import labels as L
from tei_manager.backends.base import Backend, BackendEntry, Options, ProgressFn
from tei_manager.core.capabilities import Capabilities
from tei_manager.core.diff import ObservedInstance
from tei_manager.core.facts import HostFacts
from tei_manager.core.plan import InstancePlan
from tei_manager.errors import BackendError
from tei_manager.instance_keys import instance_env
from tei_manager.runtimes.registry import get_runtime
from tei_manager.state import state_dir, state_root

#: This backend's registry name (the only place it is spelled).
NAME = "process"

WORKER_SCRIPT = "tei-fallback-worker"
_WORKER_MARKERS = ("tei-fallback-worker", "fallback_worker")
# Children started by this Python process: kept so their exit codes can be read and zombies reaped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


#: What a child may take from the operator's environment: enough to start a program and to
#: import the Python installation it belongs to.  Everything else is the plan's `env` or what
#: the runtime renders; secrets in the operator's shell never leak into instances.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def worker_command(executable: str = WORKER_SCRIPT, module: str | None = "fallback_worker") -> list[str]:
    """How to start a runtime's executable: the console script, else `python -m <module>`."""
    # Prefer the script installed beside this interpreter: same environment, no shim in between.
    beside = Path(sys.executable).parent / executable
    script = str(beside) if beside.is_file() else shutil.which(executable)
    if script:
        return [script]
    return [sys.executable, "-m", module] if module else [executable]


def _runtime_command(runtime_name: str) -> list[str]:
    runtime = get_runtime(runtime_name)
    assert runtime.executable is not None, "prepare() refuses image-only runtimes"
    # A runtime written in Python may name its module, for installs without console scripts.
    return worker_command(runtime.executable, getattr(runtime, "python_module", None))


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): a pid plus this is unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is dead for our purposes
        return None
    return fields[19]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _reap(pid: int) -> int | None:
    """Exit code of a finished child of ours (None if still running or not ours)."""
    child = _CHILDREN.get(pid)
    if child is None:
        return None
    code = child.poll()
    if code is not None:
        return code if code >= 0 else 128 - code  # -9 -> 137, as a shell and Docker report it
    return None


class ProcessBackend(Backend):
    """Local `tei-fallback-worker` processes, recorded under the state directory."""

    name = NAME

    def __init__(self, root: Path | None = None) -> None:
        self._root = root

    # ----------------------------------------------------------------------------- records
    def _dir(self, profile: str, *, create: bool = False) -> Path:
        if self._root is None:
            return state_dir(profile, create=create)
        path = self._root / profile
        if create:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _record_path(self, profile: str, instance: str, slot: str) -> Path:
        filename = f"{instance}.{slot}.json" if slot else f"{instance}.json"
        return self._dir(profile, create=True) / "instances" / filename

    @staticmethod
    def _write(path: Path, record: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
        tmp.replace(path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _alive(self, record: dict[str, Any]) -> bool:
        pid = record.get("pid")
        if not pid or record.get("stopped"):
            return False
        if _reap(pid) is not None:
            return False
        start = _proc_start_time(pid)
        if start is None or start != record.get("proc_start"):
            return False  # gone, or the pid now belongs to another process
        markers = (*_WORKER_MARKERS, *([record["executable"]] if record.get("executable") else []))
        argv = _cmdline(pid)
        if not any(argv):
            # Just after Popen returns the child may still be inside execve (the new image's
            # arguments not mapped yet), and /proc shows an empty command line: the start time
            # already proved it is our process, so it is starting, not gone.
            return True
        return any(m in arg for arg in argv[:3] for m in markers)

    def _observe(self, path: Path, record: dict[str, Any]) -> ObservedInstance:
        raw = record["plan"]
        plan: InstancePlan | None
        try:
            plan = InstancePlan.model_validate(raw)
        except ValueError:
            # A record written by an older version: still listed (so apply replaces it and down
            # removes it), from the few fields every version wrote.
            plan = None
        alive = self._alive(record)
        if alive:
            state = "running"
        elif record.get("pid") is None and not record.get("stopped"):
            state = "created"
        else:
            state = "exited"
        exit_code = record.get("exit_code")
        if not alive and record.get("pid") and exit_code is None:
            exit_code = _reap(record["pid"])
        started = record.get("started_at")
        return ObservedInstance(
            name=str(raw["name"]),
            profile=str(raw["profile"]),
            backend=self.name,
            handle=str(path),
            state=state,  # type: ignore[arg-type]
            spec_hash=record.get("spec_hash"),
            plan=plan,
            slot=record.get("slot", ""),
            bind=raw.get("bind"),
            port=raw.get("host_port"),
            started_at=datetime.fromisoformat(started) if started else None,
            exit_code=exit_code,
            engine_restarts=0,
            pid=record.get("pid") if alive else None,
        )

    def _load(self, obs: ObservedInstance) -> tuple[Path, dict[str, Any]]:
        path = Path(obs.handle)
        record = self._read(path)
        if record is None:
            raise BackendError(f"the record {path} is gone", where=obs.name,
                               fix="run `tei-manager apply` again to recreate the instance")
        return path, record

    # ----------------------------------------------------------------------------- reading
    def list(self, profile: str | None = None) -> list[ObservedInstance]:
        root = self._root or state_root()
        profiles = [profile] if profile else sorted(p.name for p in root.glob("*") if p.is_dir())
        found: list[ObservedInstance] = []
        for prof in profiles:
            for path in sorted((root / prof / "instances").glob("*.json")):
                record = self._read(path)
                if record is None or "plan" not in record:
                    continue
                try:
                    found.append(self._observe(path, record))
                except (ValueError, KeyError, TypeError):
                    continue  # not a record any version wrote: ignored, not fatal
        return found

    def refresh(self, obs: ObservedInstance) -> ObservedInstance | None:
        path = Path(obs.handle)
        record = self._read(path)
        return self._observe(path, record) if record else None

    # ----------------------------------------------------------------------------- lifecycle
    def prepare(self, instance: InstancePlan, on_progress: ProgressFn | None = None) -> None:
        if get_runtime(instance.runtime).executable is None:
            raise BackendError(
                f"the {instance.runtime} runtime runs only in containers",
                where=instance.name,
                fix="use --backend docker (a Docker Engine is needed), or set `runtime: fallback` "
                "on the deployment to run the fallback worker as a local process",
            )
        command = _runtime_command(instance.runtime)
        if command[0] == sys.executable:  # no console script: check the module can be found
            import importlib.util

            if importlib.util.find_spec(command[2]) is None:
                raise BackendError(f"the {instance.runtime} runtime is not installed", where=instance.name,
                                   fix="pip install 'tei-manager[worker]'")
        elif not Path(command[0]).is_file() and shutil.which(command[0]) is None:
            raise BackendError(f"{command[0]} is not installed", where=instance.name,
                               fix=f"install the {instance.runtime} runtime's executable on PATH")
        if instance.model.local_path is not None and not Path(instance.model.local_path).is_dir():
            raise BackendError(f"model directory {instance.model.local_path} does not exist",
                               where=instance.name, fix="fix the model's `path` in the profile")

    def create(self, instance: InstancePlan, *, slot: str = "") -> ObservedInstance:
        path = self._record_path(instance.profile, instance.name, slot)
        existing = self._read(path)
        if existing is not None and self._alive(existing):
            raise BackendError(f"instance already running (pid {existing['pid']})", where=instance.name,
                               fix="run `tei-manager down` first")
        if existing is not None and existing.get("log"):
            Path(existing["log"]).unlink(missing_ok=True)  # a stale record is replaced with its log
        logs = self._dir(instance.profile, create=True) / "logs"
        logs.mkdir(exist_ok=True, mode=0o700)
        record = {
            "plan": instance.model_dump(mode="json"),
            "labels": {k: v for k, v in L.instance_labels(instance).items() if k != L.PLAN},
            "spec_hash": instance.spec_hash,
            "slot": slot,
            "pid": None,
            "proc_start": None,
            "stopped": False,
            "exit_code": None,
            "started_at": None,
            "log": str(logs / f"{instance.name}-{time.time_ns()}.log"),
            "executable": get_runtime(instance.runtime).executable,
        }
        self._write(path, record)
        return self._observe(path, record)

    def _environment(self, plan: InstancePlan) -> dict[str, str]:
        inherited = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        return {**inherited, **plan.env, **get_runtime(plan.runtime).render_env(plan, in_container=False),
                **instance_env(plan)}

    def start(self, obs: ObservedInstance) -> ObservedInstance:
        path, record = self._load(obs)
        if self._alive(record):
            return self._observe(path, record)
        try:
            plan = InstancePlan.model_validate(record["plan"])
        except ValueError as exc:
            raise BackendError("the instance was recorded by an older version of tei-manager", where=obs.name,
                               fix="run `tei-manager apply` to replace it") from exc
        argv = _runtime_command(plan.runtime) + plan.command(in_container=False)
        log_path = Path(record["log"])
        with log_path.open("ab") as log:
            try:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self._environment(plan), start_new_session=True, close_fds=True)
            except OSError as exc:
                raise BackendError(f"cannot start {argv[0]}: {exc}", where=obs.name,
                                   fix="pip install 'tei-manager[worker]'") from exc
        _CHILDREN[child.pid] = child
        # The start time is the fork's and survives exec: with the pid it identifies this worker.
        start = _proc_start_time(child.pid)
        record.update(pid=child.pid, proc_start=start, stopped=False, exit_code=None,
                      started_at=datetime.now(timezone.utc).isoformat())
        self._write(path, record)
        return self._observe(path, record)

    def stop(self, obs: ObservedInstance, *, timeout_s: float = 10.0) -> ObservedInstance:
        path, record = self._load(obs)
        pid = record.get("pid")
        if pid and self._alive(record):
            self._signal(pid, signal.SIGTERM)
            self._signal(pid, signal.SIGCONT)  # a stopped (SIGSTOP) process acts on SIGTERM only once resumed
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._alive(record):
                time.sleep(0.1)
            if self._alive(record):
                self._signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and self._alive(record):
                    time.sleep(0.05)
        if pid:
            record["exit_code"] = _reap(pid)
        record["stopped"] = True
        self._write(path, record)
        return self._observe(path, record)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        # The worker leads its own session: signal the whole group so helpers go too.
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)

    def remove(self, obs: ObservedInstance) -> None:
        path = Path(obs.handle)
        record = self._read(path)
        if record is None:
            return
        self.stop(obs)
        pid = record.get("pid")
        if pid:
            _CHILDREN.pop(pid, None)
        path.unlink(missing_ok=True)
        Path(record["log"]).unlink(missing_ok=True)

    def rename(self, obs: ObservedInstance, slot: str) -> ObservedInstance:
        path, record = self._load(obs)
        target = self._record_path(obs.profile, obs.name, slot)
        if target != path:
            if target.exists():
                raise BackendError(f"a record for slot {slot or 'live'} already exists: {target}",
                                   where=obs.name, fix="run `tei-manager down` to clear stale records")
            record["slot"] = slot
            self._write(target, record)
            path.unlink(missing_ok=True)
        return self._observe(target, record)

    def logs(self, obs: ObservedInstance, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        _, record = self._load(obs)
        log_path = Path(record["log"])
        try:
            fh = log_path.open("rb")
        except FileNotFoundError:
            return
        with fh:
            lines = fh.read().decode(errors="replace").splitlines()
            yield from (lines[-tail:] if tail >= 0 else lines)
            if not follow:
                return
            pending = b""
            while True:
                chunk = fh.read()
                if chunk:
                    pending += chunk
                    *done, pending = pending.split(b"\n")
                    for line in done:
                        yield line.decode(errors="replace")
                    continue
                current = self.refresh(obs)
                if current is None or current.state != "running":
                    return
                time.sleep(0.25)

    def pids(self, obs: ObservedInstance) -> set[int]:
        if obs.pid is None:
            return set()
        found = {obs.pid}
        # Children of the worker (tokenizer pools, CUDA helpers) count as the instance's too.
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == obs.pid:  # field 5: process group
                found.add(int(stat.parent.name))
        return found



def capabilities(facts: HostFacts) -> Capabilities:
    """Local executables (the fallback worker), on the CPU or any GPU of this host."""
    return Capabilities(backend=NAME, artifact="executable", gpus=True, summary="local processes")


def _open(options: Options) -> Backend:
    return ProcessBackend()


ENTRY = BackendEntry(name=NAME, help="local processes (the fallback worker), no engine needed",
                     capabilities=capabilities, open=_open)
