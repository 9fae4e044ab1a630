"""container_spec(): the Docker arguments an InstancePlan becomes (pure, no engine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from backend_helpers import instance

from tei_manager.backends import labels as L
from tei_manager.backends.docker import container_spec
from tei_manager.core.plan import ModelCache, ModelSource


def test_cpu_instance_is_unprivileged_limited_and_published_on_loopback_only():
    inst = instance("a", port=18001).model_copy(update={"memory_bytes": 2**30, "cpus": 1.5})
    spec = container_spec(inst)
    assert spec["name"] == "tei-p-a"
    assert spec["ports"] == {"8080/tcp": ("127.0.0.1", 18001)}
    assert spec["privileged"] is False and spec["cap_drop"] == ["ALL"]
    assert spec["security_opt"] == ["no-new-privileges:true"]
    assert "ipc_mode" not in spec and spec["shm_size"] > 0
    assert spec["mem_limit"] == 2**30 and spec["memswap_limit"] == 2**30  # no swap unless asked
    assert spec["nano_cpus"] == 1_500_000_000
    assert "device_requests" not in spec
    assert spec["environment"]["HUGGINGFACE_HUB_CACHE"] == "/data"
    assert spec["volumes"] == {"tei-manager-hf-cache": {"bind": "/data", "mode": "rw"}}
    assert spec["command"][:6] == ["--model-id", "BAAI/bge-m3", "--port", "8080", "--hostname", "0.0.0.0"]


def test_gpu_pinning_and_local_model_mount():
    inst = instance("g", gpu=1, runtime="tei").model_copy(update={
        "model": ModelSource(hub_id="BAAI/bge-m3", local_path="/srv/models/m3", mount_name="m3"),
        "hf_cache": ModelCache(host_path="/var/cache/hf")})
    spec = container_spec(inst, slot="next")
    assert spec["name"] == "tei-p-g.next"
    (request,) = spec["device_requests"]
    assert request["DeviceIDs"] == ["1"] and request["Capabilities"] == [["gpu"]]
    assert spec["volumes"]["/srv/models/m3"] == {"bind": "/models/m3", "mode": "ro"}
    assert spec["volumes"]["/var/cache/hf"] == {"bind": "/data", "mode": "rw"}  # absolute path: bind mount
    assert spec["command"][:2] == ["--model-id", "/models/m3"]


def test_labels_carry_the_plan_but_never_credentials():
    inst = instance("a").model_copy(update={
        "env": {"HF_TOKEN": "hf_secret", "API_KEY": "k-secret", "LOG_LEVEL": "info"},
        "settings": instance("a").settings.model_copy(
            update={"extra_args": ("--api-key", "k-secret", "--hf-token=hf_secret")})})
    labels = container_spec(inst)["labels"]
    assert "secret" not in json.dumps(labels)
    assert labels[L.SPEC_HASH] == inst.spec_hash and labels[L.PROFILE] == "p" and labels[L.INSTANCE] == "a"
    stored = L.plan_from_labels(labels)
    assert stored.env["LOG_LEVEL"] == "info" and stored.env["HF_TOKEN"] == "***"
    assert "--api-key" in stored.args and "k-secret" not in stored.args


def test_a_local_process_gets_only_the_environment_it_needs(monkeypatch):
    """The operator's shell never leaks into an instance: only what starts a program and finds
    its Python install, the deployment's own env and what the runtime renders."""
    from tei_manager.backends.process import ProcessBackend

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    inst = instance("a").model_copy(update={"env": {"LOG_LEVEL": "debug"},
                                             "hf_cache": ModelCache(host_path="/var/cache/hf")})
    env = ProcessBackend()._environment(inst)
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PATH"] == "/usr/bin:/bin" and env["LOG_LEVEL"] == "debug"
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["HUGGINGFACE_HUB_CACHE"] == "/var/cache/hf"
    spec = container_spec(inst)
    assert "AWS_SECRET_ACCESS_KEY" not in spec["environment"]
    assert spec["environment"] == {"LOG_LEVEL": "debug", "HUGGINGFACE_HUB_CACHE": "/data"}


def test_a_process_record_from_an_older_version_is_listed_and_removable(tmp_path):
    """Records written before runtime settings were typed (flags in `args`) stay visible, so that
    apply replaces them and down removes them instead of tripping over them."""
    import json as _json

    from tei_manager.backends.process import ProcessBackend

    old = instance("a").model_dump(mode="json")
    del old["settings"]
    old["args"] = ["--max-batch-tokens", "4096"]
    record = tmp_path / "p" / "instances" / "a.json"
    record.parent.mkdir(parents=True)
    log = tmp_path / "a.log"
    log.write_text("")
    record.write_text(_json.dumps({"plan": old, "spec_hash": "old", "pid": None, "stopped": True, "log": str(log)}))
    backend = ProcessBackend(root=tmp_path)
    (obs,) = backend.list("p")
    assert (obs.name, obs.port, obs.plan, obs.state) == ("a", 18000, None, "exited")
    backend.remove(obs)
    assert backend.list("p") == [] and not record.exists()
