"""The supervisor heals real instances: a container and a process killed with SIGKILL come back
healthy, and the restart is counted where `status` reads it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from it_support import free_port, plan_profile, wait_for, write_profile

from tei_manager.backends.docker import DockerBackend
from tei_manager.backends.process import ProcessBackend
from tei_manager.health import BackoffPolicy
from tei_manager.instance_keys import bearer
from tei_manager.orchestrator import apply, status
from tei_manager.supervisor import Supervisor, SupervisorEvent

pytestmark = [pytest.mark.slow]

POLICY = BackoffPolicy(failure_threshold=2, initial_delay_s=1, startup_grace_s=120)


def one_instance_profile(name: str, image: str, model_dir: Path, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "fallback_image": image,
        "hf_cache": f"{name}-hf-cache",
        "models": {"embedder": {"id": "BAAI/bge-m3", "task": "embed", "path": str(model_dir)}},
        "tenants": {"ops": {}},
        "deployments": [{"name": "ops-embed", "tenant": "ops", "model": "embedder", "placement": "cpu",
                         "runtime": "fallback", "port": port, "tuning": {"max_batch_tokens": 2048}}],
    }


def supervise_until_healed(sup: Supervisor, events: list[SupervisorEvent], timeout_s: float = 120) -> None:
    def healed() -> bool:
        sup.tick()
        kinds = [e.kind for e in events]
        return "restarted" in kinds and kinds[-1] == "healthy"

    wait_for(healed, timeout_s=timeout_s, interval_s=1, what=f"a restart and recovery (events: {events})")


@pytest.mark.docker
def test_killed_container_is_restarted_healthy_and_counted(docker_client: Any, worker_image: str, models_dir: Path,
                                                           profile_name: str, tmp_path: Path) -> None:
    port = free_port()
    path = write_profile(tmp_path, one_instance_profile(profile_name, worker_image, models_dir / "embedder", port))
    plan = plan_profile(path)
    backend = DockerBackend()
    apply(plan, backend, timeout_s=120)
    container = docker_client.containers.get(f"tei-{profile_name}-ops-embed")

    events: list[SupervisorEvent] = []
    sup = Supervisor(backend, plan, policy=POLICY, on_event=events.append)
    sup.tick()
    assert [e.kind for e in events] == ["healthy"]

    container.kill(signal="SIGKILL")
    supervise_until_healed(sup, events)
    kinds = [e.kind for e in events]
    assert kinds.index("exited") < kinds.index("restarting") < kinds.index("restarted")
    assert "137" in events[kinds.index("exited")].detail

    container.reload()
    assert container.status == "running" and container.id == docker_client.containers.get(container.name).id
    (row,) = status(backend, profile_name)
    assert (row.health, row.restarts) == ("healthy", 1)
    assert httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": "back"},
                      headers=bearer(profile_name, "ops-embed"), timeout=60).status_code == 200
    backend.close()


def test_killed_process_is_restarted_healthy_and_counted(profile_name: str, tmp_path: Path) -> None:
    from fixtures.tiny_models import minilm_path

    port = free_port()
    data = one_instance_profile(profile_name, "unused", minilm_path(), port)
    data["models"]["embedder"]["id"] = "sentence-transformers/all-MiniLM-L6-v2"
    plan = plan_profile(write_profile(tmp_path, data))
    backend = ProcessBackend()
    apply(plan, backend, timeout_s=120)
    (before,) = status(backend, profile_name)

    events: list[SupervisorEvent] = []
    sup = Supervisor(backend, plan, policy=POLICY, on_event=events.append)
    sup.tick()
    os.kill(before.pid, signal.SIGKILL)
    wait_for(lambda: backend.list(profile_name)[0].state == "exited", timeout_s=10, what="the kill to land")
    supervise_until_healed(sup, events)

    (after,) = status(backend, profile_name)
    assert after.pid != before.pid and (after.health, after.restarts) == ("healthy", 1)
    started = time.monotonic()
    assert httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": "back"},
                      headers=bearer(profile_name, "ops-embed"), timeout=60).status_code == 200
    assert time.monotonic() - started < 30


def _zombies_of_ours() -> list[int]:
    from tei_manager.supervisor import _zombie_children

    return _zombie_children()


def test_a_hung_process_that_ignores_sigterm_is_killed_and_replaced(profile_name: str, tmp_path: Path) -> None:
    """A SIGSTOPped worker fails its probes; the restart does not wait out a SIGTERM it cannot
    act on, and neither the hung worker nor the restarts leave a zombie behind."""
    from fixtures.tiny_models import minilm_path

    port = free_port()
    data = one_instance_profile(profile_name, "unused", minilm_path(), port)
    data["models"]["embedder"]["id"] = "sentence-transformers/all-MiniLM-L6-v2"
    plan = plan_profile(write_profile(tmp_path, data))
    backend = ProcessBackend()
    apply(plan, backend, timeout_s=120)
    (before,) = status(backend, profile_name)

    events: list[SupervisorEvent] = []
    sup = Supervisor(backend, plan, policy=POLICY, on_event=events.append)
    sup.tick()
    os.kill(before.pid, signal.SIGSTOP)
    # Restarted by this test process: the new worker is our child, so its end must be reaped by us.
    supervise_until_healed(sup, events)
    (after,) = status(backend, profile_name)
    assert after.pid != before.pid and after.health == "healthy"
    assert not Path(f"/proc/{before.pid}").exists() or before.pid not in _zombies_of_ours()

    # kill -9 the replacement (our own child now): the next round reaps it, no zombie remains.
    events.clear()
    os.kill(after.pid, signal.SIGKILL)
    supervise_until_healed(sup, events)
    assert after.pid not in _zombies_of_ours()
    assert httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": "back"},
                      headers=bearer(profile_name, "ops-embed"), timeout=60).status_code == 200
