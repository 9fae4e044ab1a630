"""Helpers shared by the integration tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

LABEL_PROFILE = "tei-manager.profile"


def remove_profile_containers(client: Any, profile: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_PROFILE}={profile}"}):
        try:
            container.remove(force=True)
        except Exception:
            pass


def cleanup_profile(client: Any, name: str) -> None:
    from tei_manager.backends.process import ProcessBackend
    from tei_manager.orchestrator import down

    remove_profile_containers(client, name)
    try:
        down(name, ProcessBackend(), stop_timeout_s=3)
    except Exception:
        pass
    for volume in client.volumes.list(filters={"name": name}):
        try:
            volume.remove(force=True)
        except Exception:
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_profile(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_for(predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.5, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or predicate}")
        time.sleep(interval_s)


def profile_containers(client: Any, profile: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_PROFILE}={profile}"})


def plan_profile(path: Path, facts: Any = None) -> Any:
    """Load and plan a profile the way `apply` does (live host facts unless `facts` is given)."""
    from tei_manager.core.planner import plan
    from tei_manager.probe import probe_host
    from tei_manager.profiles import load_profile

    return plan(load_profile(path), facts if facts is not None else probe_host(), source=str(path))


def described_gpu_host() -> Any:
    """An L20 host with a GPU-capable Docker Engine, as `plan --gpus` would describe it: the only
    way to plan a TEI GPU instance on a machine that has no GPU."""
    from tei_manager.core.facts import DockerFact, HostFacts, parse_gpu_specs

    return HostFacts(gpus=parse_gpu_specs("0:NVIDIA L20:46068MiB:8.9"),
                     docker=DockerFact(reachable=True, nvidia_runtime=True), origin="described")
