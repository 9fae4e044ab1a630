"""Docker backend: one container per instance, described entirely by its labels.

`container_spec(instance)` is a pure function from an InstancePlan to the keyword arguments of
`docker.containers.create`; `DockerBackend` performs the engine calls and maps the SDK's errors
to `BackendError`s that say which instance, what the engine said and what to do.

Security defaults (docs/operations.md): ports published on the plan's bind address only
(127.0.0.1 unless the profile says otherwise), no privileges, every capability dropped,
no-new-privileges, a pids limit, memory/CPU limits from the plan, and a sized /dev/shm instead of
`--ipc=host` (TEI and the worker need no shared IPC namespace; host IPC would let a container see
the host's shared memory).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from tei_manager.backends import labels as L
from tei_manager.backends.base import Backend, BackendEntry, BackendOption, Options, ProgressFn
from tei_manager.core.capabilities import Capabilities
from tei_manager.core.diff import ObservedInstance, RunState
from tei_manager.core.facts import HostFacts
from tei_manager.core.plan import CONTAINER_HF_CACHE, CONTAINER_MODEL_DIR, CONTAINER_PORT, InstancePlan
from tei_manager.errors import BackendError, HostError
from tei_manager.instance_keys import instance_env
from tei_manager.runtimes.registry import get_runtime

#: This backend's registry name (the only place it is spelled).
NAME = "docker"

# Docker's 64 MiB default is small for tokenizer worker pools; 1 GiB is plenty without host IPC.
DEFAULT_SHM_BYTES = 1024**3
PIDS_LIMIT = 4096
# Survives daemon restarts and reboots, but not an explicit `docker stop`/`down`, and not a
# `docker kill` (which the supervisor notices and undoes).
RESTART_POLICY = {"Name": "unless-stopped"}
STOP_TIMEOUT_S = 10

_GPU_ERROR = re.compile(r"could not select device driver|nvidia-container-cli|unknown or invalid runtime name: nvidia",
                        re.IGNORECASE)
_PORT_ERROR = re.compile(r"port is already allocated|address already in use", re.IGNORECASE)


def container_spec(instance: InstancePlan, *, slot: str = "") -> dict[str, Any]:
    """`containers.create(**spec)` arguments for one instance.  Pure: no engine calls.

    The image's own entrypoint is kept (`text-embeddings-router` in TEI images, whose `cuda-*`
    variants wrap it in a script that picks the binary for the GPU; `tei-fallback-worker` in the
    worker image); the command is the runtime's argument list, exactly what
    `text-embeddings-router` takes.
    """
    environment = {**instance.env, **get_runtime(instance.runtime).render_env(instance, in_container=True),
                   **instance_env(instance)}
    volumes: dict[str, dict[str, str]] = {instance.hf_cache.name: {"bind": CONTAINER_HF_CACHE, "mode": "rw"}}
    if instance.model.local_path is not None:
        volumes[instance.model.local_path] = {
            "bind": f"{CONTAINER_MODEL_DIR}/{instance.model.mount_name}",
            "mode": "ro",
        }
    spec: dict[str, Any] = {
        "image": instance.image,
        "command": instance.command(in_container=True),
        "name": L.slot_name(instance.profile, instance.name, slot),
        "labels": L.instance_labels(instance),
        "environment": environment,
        "ports": {f"{CONTAINER_PORT}/tcp": (instance.bind, instance.host_port)},
        "volumes": volumes,
        "restart_policy": dict(RESTART_POLICY),
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": PIDS_LIMIT,
        "shm_size": instance.shm_bytes or DEFAULT_SHM_BYTES,
        "stop_signal": "SIGTERM",
        "detach": True,
    }
    if instance.gpu is not None:
        import docker.types

        spec["device_requests"] = [docker.types.DeviceRequest(device_ids=[str(instance.gpu)],
                                                              capabilities=[["gpu"]])]
    if instance.memory_bytes is not None:
        spec["mem_limit"] = instance.memory_bytes
        # Without an explicit swap limit Docker allows as much swap again; keep "no swap" explicit.
        spec["memswap_limit"] = instance.memory_swap_bytes or instance.memory_bytes
    elif instance.memory_swap_bytes is not None:
        spec["memswap_limit"] = instance.memory_swap_bytes
    if instance.cpus is not None:
        spec["nano_cpus"] = int(instance.cpus * 1e9)
    return spec


@contextlib.contextmanager
def engine_errors(what: str, *, where: str, fix: str | None = None) -> Iterator[None]:
    """The one map from the Docker SDK's failures to ours, around engine calls that have no more
    specific handling: DockerException (API errors, NotFound), requests' connection errors and
    OSError (socket) become a BackendError naming the instance and what was being done."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except BackendError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        detail = getattr(exc, "explanation", None) or exc
        raise BackendError(f"{what}: {detail}", where=where,
                           fix=fix or "check that the Docker Engine is running (docker info)") from exc


def _parse_time(value: str | None) -> datetime | None:
    if not value or value.startswith("0001-"):
        return None
    # Docker gives nanoseconds; datetime takes microseconds.
    value = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _state(status: str) -> RunState:
    return status if status in ("created", "running", "restarting", "paused", "exited", "dead") else "unknown"  # type: ignore[return-value]


class DockerBackend(Backend):
    """Runs instances as containers on one Docker Engine (local socket or `docker_url`)."""

    name = NAME
    down_note = "the shared Hugging Face cache volume is kept (docker volume rm it to free the space)"

    def prepare_detail(self, instance: InstancePlan) -> str:
        return instance.image

    def __init__(self, docker_url: str | None = None, *, client: Any = None) -> None:
        import docker.errors

        import docker

        self._errors = docker.errors
        self.url = docker_url or os.environ.get("DOCKER_HOST") or "the local Docker socket"
        # Host paths (model dirs, a bind-mounted cache) can only be checked when the engine is here.
        self._engine_is_local = not self.url.startswith(("tcp://", "ssh://", "http://", "https://"))
        try:
            self.client = client or (docker.DockerClient(base_url=docker_url)
                                     if docker_url else docker.from_env())
            self.client.ping()
        except Exception as exc:  # the SDK raises DockerException, requests errors or OSError
            raise HostError(
                f"the Docker Engine at {self.url} does not answer: {exc}",
                where=NAME,
                fix="start Docker (systemctl start docker), check --docker-url/DOCKER_HOST, "
                "or use --backend process for fallback-runtime profiles",
            ) from exc

    # ----------------------------------------------------------------------------- reading
    def _observe(self, container: Any) -> ObservedInstance | None:
        labels = container.labels or {}
        if labels.get(L.MANAGED) != "true":
            return None
        profile, name = labels.get(L.PROFILE, ""), labels.get(L.INSTANCE, "")
        base = L.base_name(profile, name)
        cname = container.name
        slot = cname[len(base) + 1:] if cname.startswith(base + ".") else ""
        state = container.attrs.get("State", {})
        port = labels.get(L.PORT)
        return ObservedInstance(
            name=name,
            profile=profile,
            backend=self.name,
            handle=container.id,
            state=_state(state.get("Status", "")),
            spec_hash=labels.get(L.SPEC_HASH),
            plan=L.plan_from_labels(labels),
            slot=slot,
            bind=labels.get(L.BIND),
            port=int(port) if port and port.isdigit() else None,
            started_at=_parse_time(state.get("StartedAt")),
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            engine_restarts=int(container.attrs.get("RestartCount", 0) or 0),
            pid=state.get("Pid") or None,
            error=state.get("Error") or None,
        )

    def list(self, profile: str | None = None) -> list[ObservedInstance]:
        filters: dict[str, str | list[str] | bool] = {
            "label": [f"{L.MANAGED}=true"] + ([f"{L.PROFILE}={profile}"] if profile else [])}
        try:
            containers = self.client.containers.list(all=True, filters=filters, ignore_removed=True)
        except self._errors.DockerException as exc:
            raise BackendError(f"cannot list containers: {exc}", where=NAME,
                               fix="check that the Docker Engine is running") from exc
        found = [self._observe(c) for c in containers]
        return sorted((o for o in found if o is not None), key=lambda o: (o.profile, o.name, o.slot))

    def _container(self, obs: ObservedInstance) -> Any:
        try:
            return self.client.containers.get(obs.handle)
        except self._errors.NotFound as exc:
            raise BackendError(f"container {obs.handle[:12]} no longer exists", where=obs.name,
                               fix="run `tei-manager apply` again to recreate it") from exc

    def refresh(self, obs: ObservedInstance) -> ObservedInstance | None:
        try:
            return self._observe(self.client.containers.get(obs.handle))
        except self._errors.NotFound:
            return None

    # ----------------------------------------------------------------------------- preparing
    def prepare(self, instance: InstancePlan, on_progress: ProgressFn | None = None) -> None:
        local = instance.model.local_path
        # Docker would silently create a missing bind-mount source as an empty root-owned directory.
        if local is not None and self._engine_is_local and not os.path.isdir(local):
            raise BackendError(f"model directory {local} does not exist", where=instance.name,
                               fix="fix the model's `path` in the profile")
        self._ensure_image(instance, on_progress)
        self._ensure_cache_volume(instance)

    def _ensure_image(self, instance: InstancePlan, on_progress: ProgressFn | None) -> None:
        image = instance.image
        try:
            self.client.images.get(image)
            return
        except self._errors.ImageNotFound:
            pass
        except self._errors.DockerException as exc:
            raise BackendError(f"cannot inspect image {image}: {exc}", where=instance.name) from exc
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        try:
            layers: dict[str, tuple[int, int]] = {}
            for event in self.client.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise BackendError(event["error"])
                detail = event.get("progressDetail") or {}
                if event.get("id") and detail.get("total"):
                    layers[event["id"]] = (detail.get("current", 0), detail["total"])
                if on_progress is not None:
                    done = sum(c for c, _ in layers.values()) or None
                    total = sum(t for _, t in layers.values()) or None
                    on_progress(f"pulling {image}: {event.get('status', '')}", done, total)
            self.client.images.get(image)
        except (self._errors.DockerException, BackendError) as exc:
            fix = ("build it with scripts/build-worker-image.sh" if instance.runtime == "fallback"
                   else "check registry access (docker login, proxy) or load the image with `docker load`")
            raise BackendError(f"image {image} not found locally and could not be pulled: "
                               f"{getattr(exc, 'explanation', None) or exc}",
                               where=instance.name, fix=fix) from exc

    def _ensure_cache_volume(self, instance: InstancePlan) -> None:
        """A named HF cache is created once, labelled so `down` knows to keep it."""
        volume = instance.hf_cache.volume
        if volume is None:
            return
        with engine_errors(f"cannot create the model cache volume {volume}", where=instance.name):
            try:
                self.client.volumes.get(volume)
            except self._errors.NotFound:
                self.client.volumes.create(volume, labels={L.HF_CACHE: "true"})

    # ----------------------------------------------------------------------------- lifecycle
    def create(self, instance: InstancePlan, *, slot: str = "") -> ObservedInstance:
        spec = container_spec(instance, slot=slot)
        try:
            container = self.client.containers.create(**spec)
        except self._errors.ImageNotFound as exc:
            raise BackendError(f"image {instance.image} is not present", where=instance.name,
                               fix="run apply again (it pulls or reports why it cannot)") from exc
        except self._errors.APIError as exc:
            if exc.status_code == 409:
                raise BackendError(f"a container named {spec['name']} already exists", where=instance.name,
                                   fix=f"remove it (docker rm -f {spec['name']}) or run `tei-manager down`") from exc
            raise BackendError(f"the engine refused to create the container: {exc.explanation or exc}",
                               where=instance.name) from exc
        observed = self._observe(container)
        assert observed is not None  # we just labelled it
        return observed

    def start(self, obs: ObservedInstance) -> ObservedInstance:
        container = self._container(obs)
        try:
            container.start()
        except self._errors.APIError as exc:
            message = str(exc.explanation or exc)
            plan = obs.plan
            gpu = plan.gpu if plan else "?"
            if re.search(r"unknown device|invalid device|device .* not found", message, re.IGNORECASE):
                raise BackendError(f"GPU {gpu} is not on this host ({message})", where=obs.name,
                                   fix="check `nvidia-smi -L` and the deployment's `placement`") from exc
            if _GPU_ERROR.search(message):
                raise BackendError(
                    f"GPU {gpu} requested but this Docker Engine has no NVIDIA runtime ({message})",
                    where=obs.name,
                    fix="install nvidia-container-toolkit and restart Docker, or place the deployment on cpu",
                ) from exc
            if _PORT_ERROR.search(message):
                raise BackendError(f"port {obs.bind}:{obs.port} is taken ({message})", where=obs.name,
                                   fix="free the port or give the deployment another `port`") from exc
            raise BackendError(f"the engine could not start the container: {message}", where=obs.name) from exc
        return self._observe(self._reload(container)) or obs

    def _reload(self, container: Any) -> Any:
        with engine_errors("cannot read the container's state", where=container.name):
            container.reload()
        return container

    def stop(self, obs: ObservedInstance, *, timeout_s: float = STOP_TIMEOUT_S) -> ObservedInstance:
        container = self._container(obs)
        try:
            container.stop(timeout=int(timeout_s))
        except self._errors.APIError as exc:
            raise BackendError(f"cannot stop the container: {exc.explanation or exc}", where=obs.name) from exc
        return self._observe(self._reload(container)) or obs

    def remove(self, obs: ObservedInstance) -> None:
        try:
            container = self.client.containers.get(obs.handle)
        except self._errors.NotFound:
            return
        try:
            # v=False: anonymous volumes would go too with v=True; the HF cache is named and shared.
            container.remove(force=True, v=False)
        except self._errors.NotFound:
            return
        except self._errors.APIError as exc:
            raise BackendError(f"cannot remove container {container.name}: {exc.explanation or exc}",
                               where=obs.name, fix=f"docker rm -f {container.name}") from exc

    def rename(self, obs: ObservedInstance, slot: str) -> ObservedInstance:
        container = self._container(obs)
        target = L.slot_name(obs.profile, obs.name, slot)
        if container.name != target:
            try:
                container.rename(target)
            except self._errors.APIError as exc:
                raise BackendError(f"cannot rename {container.name} to {target}: {exc.explanation or exc}",
                                   where=obs.name, fix=f"remove the stale container: docker rm -f {target}") from exc
        return self._observe(self._reload(container)) or obs

    def logs(self, obs: ObservedInstance, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        container = self._container(obs)
        buffer = b""
        with engine_errors("cannot read the container's logs", where=obs.name):
            stream = container.logs(stream=True, follow=follow, tail=tail if tail >= 0 else "all")
            for chunk in stream:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace").rstrip("\r")
        if buffer:
            yield buffer.decode(errors="replace")

    def pids(self, obs: ObservedInstance) -> set[int]:
        if obs.state != "running":
            return set()
        try:
            top = self._container(obs).top(ps_args="-eo pid")
        except (self._errors.DockerException, BackendError):
            return {obs.pid} if obs.pid else set()
        titles = [t.upper() for t in top.get("Titles", [])]
        column = titles.index("PID") if "PID" in titles else 0
        return {int(row[column]) for row in top.get("Processes") or [] if str(row[column]).isdigit()}

    def close(self) -> None:
        self.client.close()



def capabilities(facts: HostFacts) -> Capabilities:
    """Images on the engine `facts.docker` describes; GPUs only through its NVIDIA runtime."""
    engine = facts.docker
    return Capabilities(
        backend=NAME,
        artifact="image",
        gpus=engine.nvidia_runtime,
        summary="Docker reachable",
        blocked=None if engine.reachable else f"Docker Engine not reachable ({engine.error or 'unknown reason'})",
        no_gpu="Docker has no NVIDIA runtime, so a {runtime} container cannot use GPU {gpu}",
    )


def _open(options: Options) -> Backend:
    return DockerBackend(options.get("docker_url"))


ENTRY = BackendEntry(
    name=NAME,
    help="containers on a Docker Engine",
    capabilities=capabilities,
    open=_open,
    options=(BackendOption("docker_url", "--docker-url", "Docker Engine address, e.g. unix:///var/run/docker.sock.",
                           envvar="DOCKER_HOST"),),
    probe_option="docker_url",
)
