"""A `TrialTarget` over the backends `apply` uses: trial instances from the deployment's own plan.

A trial instance is the deployment's planned `InstancePlan` with three things changed and nothing
else: the settings under trial (`model_copy` of its typed `RuntimeSettings`), a name and profile
label of its own (``<profile>-tune`` / ``<deployment>-trial-N``, so `apply`, `down` and `status`
of the real profile never see it and it never sees theirs), and a free loopback port. Image,
device, GPU, memory and CPU limits, environment and model source stay exactly as `apply` would
run them. It is started through the same backend (`create` + `start`) and waited for with the
orchestrator's own health gate (`/health`, then `/info` naming the model, with the key).

The internal key stays on: a trial instance is planned with the deployment's `internal_auth`, so
it gets its own derived key (`tei_manager.instance_keys`) and the load generator presents it.
This keeps the loopback port as closed as a live instance's for the minutes a tune runs, and the
key check is part of what is measured, as it is in production.

Peak memory: the process backend's worker pid's kernel high-water mark (`VmHWM`); a container's
cgroup peak on CPU; NVML per process on a GPU (sampled from the moment the instance starts).

Everything started is removed: after each trial (`stop`), on any failure while starting, and by
`close()`, which the tune service calls in a `finally` (Ctrl-C included). Trial instances left by
a tune that was killed outright are removed by `clear_leftovers()` at the start of the next one.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Mapping

from tei_manager.backends.base import Backend, HostPids
from tei_manager.core.diff import ObservedInstance
from tei_manager.core.plan import InstancePlan
from tei_manager.errors import BackendError
from tei_manager.instance_keys import instance_headers
from tei_manager.orchestrator import wait_healthy

from .local import free_port
from .memory import CgroupPeak, NvmlPeak, PeakProbe, RssPeak, cgroup_dir_of
from .requests import FORWARD_WORKERS_FLAG
from .target import Exit, Settings, StartFailed

#: Appended to the profile's name on trial instances: the profile label they live under.
TRIAL_PROFILE_SUFFIX = "-tune"
#: How long a just-started instance may take to be reported running before the health gate judges it.
SETTLE_S = 3.0
#: Settings that are `RuntimeSettings` fields of the same name.
_TYPED = ("max_batch_tokens", "max_batch_requests", "max_concurrent_requests", "max_client_batch_size", "dtype")
_OOM = re.compile(r"out.of.memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|exit code 137|exited with code 137",
                  re.IGNORECASE)


def trial_profile(profile: str) -> str:
    return profile + TRIAL_PROFILE_SUFFIX


def _without_forward_workers(extra_args: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in extra_args:
        if skip:
            skip = False
            continue
        if arg == FORWARD_WORKERS_FLAG:
            skip = True
            continue
        if arg.startswith(FORWARD_WORKERS_FLAG + "="):
            continue
        out.append(arg)
    return out


def trial_plan(base: InstancePlan, settings: Settings, *, port: int, number: int) -> InstancePlan:
    """``base`` with the settings under trial, a name and profile of its own and ``port`` on 127.0.0.1."""
    unknown = set(settings) - {*_TYPED, "forward_workers"}
    if unknown:
        raise ValueError(f"the {base.runtime} runtime has no tuning setting {sorted(unknown)}")
    update: dict[str, object] = {k: settings[k] for k in _TYPED if k in settings}
    if "forward_workers" in settings:
        update["extra_args"] = (*_without_forward_workers(base.settings.extra_args),
                                FORWARD_WORKERS_FLAG, str(settings["forward_workers"]))
    return base.model_copy(update={
        "name": f"{base.deployment}-trial-{number}",
        "profile": trial_profile(base.profile),
        "replica": 0,
        "bind": "127.0.0.1",
        "host_port": port,
        "settings": base.settings.model_copy(update=update),
        # The planner's estimate was for the live setting; a trial's failure must not quote it.
        "vram": None,
    })


class BackendTrialInstance:
    def __init__(self, backend: Backend, obs: ObservedInstance, plan: InstancePlan, probe: PeakProbe) -> None:
        self._backend = backend
        self._obs = obs
        self.plan = plan
        self._probe = probe
        self._restarts = obs.engine_restarts
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.plan.host_port}"

    @property
    def headers(self) -> Mapping[str, str]:
        return instance_headers(self.plan)

    def peak_memory_bytes(self) -> int | None:
        return self._probe.peak_bytes()

    def exited(self) -> Exit | None:
        current = self._backend.refresh(self._obs)
        if current is None:
            return Exit("crash", "the instance disappeared (removed by someone else?)")
        if current.state in ("running", "created") and current.engine_restarts == self._restarts:
            return None
        cause = self._backend.failure_cause(current, lines=5)
        code = current.exit_code
        if current.oom_killed or code in (137, -9) or _OOM.search(cause):
            return Exit("oom", cause)
        return Exit("crash", cause)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._probe.peak_bytes()  # a last read while the instance still exists
        try:
            self._backend.remove(self._obs)
        finally:
            self._probe.close()


class BackendTrialTarget:
    """Starts trial instances of one deployment (its planned ``base``) through ``backend``.

    ``gpu_name`` is the device label for the calibration store (None on CPU); ``ready_timeout``
    bounds warm-up (a model download on first use counts against it).
    """

    def __init__(self, backend: Backend, base: InstancePlan, *, gpu_name: str | None = None,
                 ready_timeout: float = 600.0) -> None:
        self.backend = backend
        self.base = base
        self._gpu_name = gpu_name
        self.ready_timeout = ready_timeout
        self._numbers = itertools.count(1)
        self._live: list[BackendTrialInstance] = []

    @property
    def device(self) -> str:
        return "cpu" if self.base.gpu is None else (self._gpu_name or f"gpu:{self.base.gpu}")

    def prepare(self) -> None:
        """The image or executable, once, before any trial: a missing one is the tune's error, not a setting's."""
        self.backend.prepare(self.base)

    def clear_leftovers(self) -> list[str]:
        """Remove this deployment's trial instances left by a tune that was killed outright."""
        removed: list[str] = []
        for obs in self.backend.list(trial_profile(self.base.profile)):
            if obs.name.startswith(f"{self.base.deployment}-trial-"):
                self.backend.remove(obs)
                removed.append(obs.name)
        return removed

    def _probe(self, obs: ObservedInstance) -> PeakProbe:
        if self.base.gpu is not None:
            pids = self.backend.pids(obs) if isinstance(self.backend, HostPids) else set()
            if obs.pid:
                pids.add(obs.pid)
            return NvmlPeak(pids, self.base.gpu)
        if obs.pid is None:
            return _NoPeak()
        if self.backend.name == "process":
            return RssPeak(obs.pid)
        cgroup = cgroup_dir_of(obs.pid)
        return CgroupPeak(cgroup) if cgroup is not None else _NoPeak()

    def start(self, settings: Settings) -> BackendTrialInstance:
        plan = trial_plan(self.base, settings, port=free_port(), number=next(self._numbers))
        try:
            obs = self.backend.create(plan)
        except BackendError as exc:
            raise StartFailed("crash", exc.what) from None
        instance: BackendTrialInstance | None = None
        try:
            obs = self._settled(self.backend.start(obs))
            # The probe starts before warm-up: the worker and TEI reach their peak before they are ready.
            instance = BackendTrialInstance(self.backend, obs, plan, self._probe(obs))
            self._live.append(instance)
            obs = wait_healthy(self.backend, obs, plan, timeout_s=self.ready_timeout)
        except BackendError as exc:
            self._remove(instance, obs)
            reason = "oom" if _OOM.search(str(exc)) or "out-of-memory" in str(exc) else (
                "timeout" if "not healthy after" in exc.what else "crash")
            raise StartFailed(reason, exc.what) from None
        except BaseException:
            self._remove(instance, obs)
            raise
        return instance

    def _settled(self, obs: ObservedInstance) -> ObservedInstance:
        """The instance once the engine reports it running (or after SETTLE_S, as it is then).

        Right after a start the process backend can see a process that is still inside exec()
        (its /proc cmdline is empty for a moment) as not running; the health gate would then call a
        healthy start a crash and the cleanup would skip a process it thinks is gone. Waiting for
        `running` first closes that window, and gives the peak probe the pid."""
        deadline = time.monotonic() + SETTLE_S
        while obs.state != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
            obs = self.backend.refresh(obs) or obs
        return obs

    def _remove(self, instance: BackendTrialInstance | None, obs: ObservedInstance) -> None:
        if instance is not None:
            instance.stop()
        else:
            self.backend.remove(obs)

    def close(self) -> None:
        """Remove every instance this target started that is still there (the Ctrl-C path)."""
        for instance in self._live:
            with contextlib.suppress(BackendError):
                instance.stop()
        self._live.clear()


class _NoPeak:
    def peak_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        pass
