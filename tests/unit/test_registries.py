"""Adding a runtime and a backend is one object each plus one registry call: shown from this file alone.

The toy runtime is a few lines of Python; the toy backend "runs" each instance as a real HTTP server
on loopback (a thread answering /health and /info), so apply's health gate and the gateway-facing
ports are exercised for real.  Only the engine itself is replaced, because that is the point.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tei_manager import orchestrator, services
from tei_manager.backends.base import Backend, BackendEntry, ProgressFn
from tei_manager.backends.registry import register_backend, unregister_backend
from tei_manager.core.capabilities import Capabilities
from tei_manager.core.diff import ObservedInstance
from tei_manager.core.facts import HostFacts
from tei_manager.core.models import Deployment, Profile
from tei_manager.core.plan import InstancePlan, RuntimeSettings
from tei_manager.core.tuning import VramProfile
from tei_manager.runtimes.base import TEI_ROUTES, Device
from tei_manager.runtimes.registry import register_runtime, unregister_runtime


class ToyRuntime:
    name = "toy"
    program = "toy-server"
    executable: str | None = "toy-server"
    health_path = "/health"
    info_path = "/info"
    routes = TEI_ROUTES
    vram = VramProfile(context_mib=100)
    ranks_with_embeddings = False

    def image(self, profile: Profile, device: Device) -> str | None:
        return None

    def obstacle(self, deployment: Deployment, profile: Profile, device: Device) -> str | None:
        return None

    def flash_attention(self, device: Device) -> bool:
        return True

    def render_args(self, settings: RuntimeSettings) -> list[str]:
        return ["--name", settings.served_model_name, "--batch", str(settings.max_batch_tokens)]

    def render_env(self, instance: InstancePlan, *, in_container: bool) -> dict[str, str]:
        return {"TOY": "1"}


def _server(inst: InstancePlan) -> ThreadingHTTPServer:
    body = json.dumps({"model_id": inst.served_model_name}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the stdlib names it
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body if self.path == "/info" else b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((inst.bind, inst.host_port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class ToyBackend(Backend):
    """Only the core contract: no slot renames, no host pids (the orchestrator copes)."""

    name = "toy"

    def __init__(self) -> None:
        self.instances: dict[str, tuple[InstancePlan, ThreadingHTTPServer | None]] = {}
        self.commands: dict[str, list[str]] = {}

    def _obs(self, name: str) -> ObservedInstance:
        inst, server = self.instances[name]
        return ObservedInstance(name=name, profile=inst.profile, backend=self.name, handle=name,
                                state="running" if server else "created", spec_hash=inst.spec_hash, plan=inst,
                                bind=inst.bind, port=inst.host_port, started_at=datetime.now(timezone.utc))

    def list(self, profile: str | None = None) -> list[ObservedInstance]:
        return [self._obs(n) for n, (i, _) in self.instances.items() if profile in (None, i.profile)]

    def prepare(self, instance: InstancePlan, on_progress: ProgressFn | None = None) -> None:
        pass

    def create(self, instance: InstancePlan, *, slot: str = "") -> ObservedInstance:
        self.instances[instance.name] = (instance, None)
        self.commands[instance.name] = ["toy-server", *instance.command(in_container=False)]
        return self._obs(instance.name)

    def start(self, obs: ObservedInstance) -> ObservedInstance:
        inst, _ = self.instances[obs.name]
        self.instances[obs.name] = (inst, _server(inst))
        return self._obs(obs.name)

    def stop(self, obs: ObservedInstance, *, timeout_s: float = 10.0) -> ObservedInstance:
        inst, server = self.instances[obs.name]
        if server:
            server.shutdown()
            server.server_close()
        self.instances[obs.name] = (inst, None)
        return self._obs(obs.name)

    def remove(self, obs: ObservedInstance) -> None:
        self.stop(obs)
        del self.instances[obs.name]

    def refresh(self, obs: ObservedInstance) -> ObservedInstance | None:
        return self._obs(obs.name) if obs.name in self.instances else None

    def logs(self, obs: ObservedInstance, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        return iter(())


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ToyBackend]:
    engine = ToyBackend()
    register_runtime(ToyRuntime(), before="tei")
    register_backend(BackendEntry(
        name="toy", help="in-memory toy",
        capabilities=lambda facts: Capabilities(backend="toy", artifact="executable", gpus=False, summary="toy"),
        open=lambda options: engine,
    ))
    # The live host as the planner sees it: no GPU, no Docker (nothing in this test needs them).
    monkeypatch.setattr("tei_manager.probe.probe_host", lambda *a, **k: HostFacts(nvml_error="none here"))
    yield engine
    for name in list(engine.instances):
        engine.remove(engine._obs(name))
    unregister_backend("toy")
    unregister_runtime("toy")


def _free_port_pair() -> int:
    """The first of two consecutive free loopback ports."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            base = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", base + 1))
                except OSError:
                    continue
        return base
    raise RuntimeError("no two consecutive free ports")


def _profile(tmp_path: Path, port: int, runtime: str = "auto") -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(f"""
name: toy-profile
models:
  minilm: {{id: sentence-transformers/all-MiniLM-L6-v2, task: embed}}
deployments:
  - {{tenant: t, model: minilm, placement: cpu, replicas: 2, port: {port}, runtime: {runtime}}}
tenants:
  t: {{}}
""")
    return path


def test_a_toy_runtime_and_backend_plan_and_apply_from_this_file_alone(
        toy: ToyBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path / "state"))
    port = _free_port_pair()
    path = _profile(tmp_path, port)
    plan = services.plan_profile(path, backend="toy")
    assert [(i.runtime, i.host_port) for i in plan.instances] == [("toy", port), ("toy", port + 1)]
    assert plan.backend == "toy" and plan.instances[0].runtime_reason.startswith("auto: toy")

    # The CLI knows the new backend without a line changed there: `plan --backend toy` prints the same plan.
    from tei_manager.cli.app import main

    capsys.readouterr()
    assert main(["plan", str(path), "--backend", "toy", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(i["runtime"], i["host_port"]) for i in shown["instances"]] == [("toy", port), ("toy", port + 1)]

    target = services.open_target("toy", plan.profile)
    result = orchestrator.apply(plan, target.backend, timeout_s=10)
    assert result.changed and {r.health for r in result.instances} == {"healthy"}
    assert toy.commands[plan.instances[0].name][-4:] == ["--name", "sentence-transformers/all-MiniLM-L6-v2",
                                                        "--batch", str(plan.instances[0].settings.max_batch_tokens)]

    # A changed setting replaces in place: this backend has no slots to keep the old copy in.
    path.write_text(path.read_text().replace("runtime: auto}", "runtime: auto, tuning: {max_batch_tokens: 1024}}"))
    again = services.plan_profile(path, backend="toy")
    result = orchestrator.apply(again, target.backend, timeout_s=10)
    assert [a.kind for a in result.actions] == ["replace", "replace"]
    assert {i.settings.max_batch_tokens for i, _ in toy.instances.values()} == {1024}


def test_a_runtime_the_backend_cannot_host_is_refused_with_the_reason(toy: ToyBackend, tmp_path: Path) -> None:
    from tei_manager.core.planner import plan
    from tei_manager.profiles import load_profile

    profile = load_profile(_profile(tmp_path, 18500, runtime="tei"))
    caps = Capabilities(backend="toy", artifact="executable", gpus=False)
    result = plan(profile, HostFacts(), capabilities=caps)
    assert any("the toy backend runs local executables, which tei does not ship" in w for w in result.warnings)


def test_an_unknown_runtime_in_a_profile_names_the_known_ones(tmp_path: Path) -> None:
    from tei_manager.errors import ProfileError
    from tei_manager.profiles import load_profile

    with pytest.raises(ProfileError) as err:
        load_profile(_profile(tmp_path, 18500, runtime="vllm"))
    assert "unknown runtime 'vllm'; use auto or one of tei, fallback" in err.value.render()
