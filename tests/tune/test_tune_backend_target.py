"""The backend-backed TrialTarget: trial instances planned from the deployment's own InstancePlan.

* the process backend with the real MiniLM: a trial instance carries its internal key, is invisible
  to the live profile, and is removed after the trial and on Ctrl-C;
* TEI through the Docker backend: the TEI image cannot run on this host (no GPU, no network to
  pull it), so the Docker SDK's client is replaced by a recorder and the test asserts on the
  container the backend asks the engine to create, exactly as `DockerBackend.create` passes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest

from tei_manager.backends.docker import DockerBackend
from tei_manager.backends.process import ProcessBackend
from tei_manager.core.facts import DockerFact, HostFacts, parse_gpu_specs
from tei_manager.core.planner import plan
from tei_manager.instance_keys import instance_key
from tei_manager.profiles import load_profile
from tei_manager.tune.backend_target import BackendTrialTarget, trial_plan
from tei_manager.tune.session import TuneOptions, run
from tei_manager.tune.target import StartFailed
from tei_manager.tune.trial import Schedule

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
ONE_L20 = HostFacts(gpus=parse_gpu_specs("0:NVIDIA L20:46068MiB:8.9"),
                    docker=DockerFact(reachable=True, nvidia_runtime=True), origin="described")
CPU = HostFacts(docker=DockerFact(reachable=False), nvml_error="no GPU here")


def _quickstart(tmp_path: Path) -> Path:
    path = tmp_path / "quickstart.yaml"
    shutil.copy(PROFILES / "quickstart.yaml", path)
    return path


# --- the trial's plan ------------------------------------------------------------------------------------


def test_a_trial_plan_changes_only_the_settings_the_name_and_the_port() -> None:
    base = plan(load_profile(PROFILES / "l20-shared.yaml"), ONE_L20).instance("bge-embedding")
    trial = trial_plan(base, {"max_batch_tokens": 4096, "max_batch_requests": 32, "max_client_batch_size": 8},
                       port=45123, number=3)
    assert (trial.name, trial.profile, trial.host_port, trial.bind) == (
        "bge-embedding-trial-3", "l20-shared-tune", 45123, "127.0.0.1")
    assert trial.settings.max_batch_tokens == 4096 and trial.settings.max_batch_requests == 32
    assert trial.settings.max_concurrent_requests == base.settings.max_concurrent_requests
    # What apply runs stays: image, GPU, limits, environment, model, the internal key.
    for field in ("image", "gpu", "gpu_uuid", "memory_bytes", "cpus", "env", "model", "runtime", "internal_auth"):
        assert getattr(trial, field) == getattr(base, field), field


def test_forward_workers_replace_the_profiles_own_flag() -> None:
    base = plan(load_profile(PROFILES / "quickstart.yaml"), CPU).instance("demo-embed")
    base = base.model_copy(update={"settings": base.settings.model_copy(
        update={"extra_args": ("--forward-workers", "3", "--json-output")})})
    trial = trial_plan(base, {"forward_workers": 2, "dtype": "bfloat16"}, port=1, number=1)
    assert trial.settings.extra_args == ("--json-output", "--forward-workers", "2")
    assert trial.settings.dtype == "bfloat16"
    with pytest.raises(ValueError, match="no tuning setting"):
        trial_plan(base, {"tokenizer_threads": 2}, port=1, number=1)


# --- TEI through the Docker backend: what the engine is asked for ---------------------------------------------


class _Container:
    def __init__(self, spec: dict[str, Any], engine: _Engine) -> None:
        self.spec = spec
        self.id = f"c{len(engine.created)}"
        self.name = spec["name"]
        self.labels = spec["labels"]
        self.attrs: dict[str, Any] = {"State": {"Status": "created"}}
        self.engine = engine

    def start(self) -> None:
        # What an engine without the NVIDIA runtime answers for a GPU request.
        raise docker.errors.APIError("500 Server Error", explanation="could not select device driver \"\" "
                                     "with capabilities: [[gpu]]")

    def reload(self) -> None:
        pass

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.engine.removed.append(self.name)


class _Engine:
    """Records what the Docker backend asks for (stands in for the SDK client: TEI cannot run here)."""

    def __init__(self) -> None:
        self.created: list[_Container] = []
        self.removed: list[str] = []
        self.containers = self

    def ping(self) -> bool:
        return True

    def create(self, **spec: Any) -> _Container:
        self.created.append(_Container(spec, self))
        return self.created[-1]

    def get(self, handle: str) -> _Container:
        for c in self.created:
            if c.id == handle and c.name not in self.removed:
                return c
        raise docker.errors.NotFound(handle)

    def close(self) -> None:
        pass


def test_a_tei_trial_asks_docker_for_the_deployments_container_with_the_trial_settings() -> None:
    base = plan(load_profile(PROFILES / "l20-shared.yaml"), ONE_L20).instance("bge-embedding")
    engine = _Engine()
    target = BackendTrialTarget(DockerBackend(client=engine), base, gpu_name="NVIDIA L20", ready_timeout=5)
    assert target.device == "NVIDIA L20"

    with pytest.raises(StartFailed) as failed:
        target.start({"max_batch_tokens": 8192, "max_client_batch_size": 8, "max_batch_requests": 32,
                      "max_concurrent_requests": 512})
    assert failed.value.reason == "crash" and "NVIDIA runtime" in failed.value.detail

    (container,) = engine.created
    spec = container.spec
    assert spec["image"] == base.image == "ghcr.io/huggingface/text-embeddings-inference:89-1.9.4"
    assert spec["name"] == "tei-l20-shared-tune-bge-embedding-trial-1"
    assert spec["labels"]["tei-manager.profile"] == "l20-shared-tune"  # never the live profile's
    (address,) = spec["ports"].values()
    assert address[0] == "127.0.0.1" and address[1] != base.host_port
    (gpu,) = spec["device_requests"]
    assert gpu["DeviceIDs"] == ["0"]
    assert spec["mem_limit"] == base.memory_bytes
    command = spec["command"]
    flags = dict(zip(command[::2], command[1::2], strict=True))
    assert flags["--model-id"] == "BAAI/bge-m3"
    assert (flags["--max-batch-tokens"], flags["--max-client-batch-size"], flags["--max-batch-requests"],
            flags["--max-concurrent-requests"]) == ("8192", "8", "32", "512")
    # The trial instance has a key of its own (derived, in its environment, never on the command line).
    assert spec["environment"]["API_KEY"] == instance_key("l20-shared-tune", "bge-embedding-trial-1")
    assert spec["environment"]["API_KEY"] not in " ".join(command)
    # A trial that failed to start is removed at once.
    assert engine.removed == [spec["name"]]


# --- the process backend, for real ----------------------------------------------------------------------------


def test_a_process_trial_instance_holds_its_key_and_is_removed(tmp_path: Path) -> None:
    profile = load_profile(_quickstart(tmp_path))
    base = plan(profile, CPU).instance("demo-embed")
    assert base.internal_auth
    backend = ProcessBackend()
    target = BackendTrialTarget(backend, base, ready_timeout=180)
    target.prepare()
    instance = target.start({"max_batch_tokens": 1024, "max_client_batch_size": 4, "max_concurrent_requests": 16})
    try:
        assert backend.list("quickstart") == []  # the live profile never sees it
        (listed,) = backend.list("quickstart-tune")
        assert listed.name == "demo-embed-trial-1" and listed.state == "running"
        body = {"inputs": ["hello", "你好"]}
        assert httpx.post(instance.base_url + "/embed", json=body, timeout=30).status_code == 401
        answer = httpx.post(instance.base_url + "/embed", json=body, headers=dict(instance.headers), timeout=30)
        assert answer.status_code == 200 and len(answer.json()) == 2
        assert instance.exited() is None
        peak = instance.peak_memory_bytes()
        assert peak is not None and peak > 50 * 2**20  # the worker's VmHWM: torch and the model
    finally:
        instance.stop()
    assert backend.list("quickstart-tune") == []
    instance.stop()  # twice is fine


def test_ctrl_c_during_a_tune_removes_the_trial_instance(tmp_path: Path) -> None:
    path = _quickstart(tmp_path)
    profile = load_profile(path)
    live = plan(profile, CPU)
    backend = ProcessBackend()

    class InterruptSecondTrial:
        """Counts trials; Ctrl-C comes while the second one's instance is warming up."""

        def __init__(self) -> None:
            self.started = 0

        def trial_started(self, deployment: str, phase: str, settings: object) -> None:
            self.started += 1

        def trial_finished(self, deployment: str, phase: str, result: object) -> None:
            pass

    progress = InterruptSecondTrial()
    original_refresh = backend.refresh

    def refresh(obs: Any) -> Any:
        current = original_refresh(obs)
        if progress.started >= 2 and current is not None and current.state == "running":
            raise KeyboardInterrupt
        return current

    backend.refresh = refresh  # type: ignore[method-assign]
    options = TuneOptions(slo_p99_ms=20_000, budget_seconds=120, deployments=("demo-embed",),
                          narrow={"max_batch_tokens": [1024], "max_client_batch_size": [4], "forward_workers": [1],
                                  "dtype": ["float32"]},
                          schedule=Schedule(step_seconds=0.5, warmup_seconds=0.1, max_concurrency=1),
                          calibration_path=tmp_path / "calibration.json")
    with pytest.raises(KeyboardInterrupt):
        run(profile, live, backend, options, progress=progress)
    assert progress.started == 2
    assert backend.list("quickstart-tune") == []
    assert not list((tmp_path / "state" / "quickstart-tune" / "instances").glob("*.json"))
