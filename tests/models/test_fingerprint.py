"""Index-safe rollouts: a deployment's embedding fingerprint guards later applies.

Real fallback-worker processes (process backend). No model hub is reachable here: a stand-in on
loopback (tests/fixtures/hub_standin.py) serves revision v1 of a tiny model and, as v2, the same
model with perturbed weights (what a new upstream revision looks like to stored vectors).
"""

from __future__ import annotations

import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.hub_standin import hub_standin
from test_apply_pulls import free_port  # type: ignore[import-not-found]

from tei_manager.cli import output
from tei_manager.cli.app import main
from tei_manager.core.plan import InstancePlan
from tei_manager.instance_keys import bearer
from tei_manager.models import fingerprint
from tei_manager.models.fingerprint import Fingerprint, drift
from tei_manager.state import state_dir

pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    for console in (output.console, output.err_console):
        monkeypatch.setattr(console, "width", 300)


@pytest.fixture
def name() -> Iterator[str]:
    profile = f"fp-{uuid.uuid4().hex[:6]}"
    yield profile
    from tei_manager.backends.process import ProcessBackend
    from tei_manager.orchestrator import down

    down(profile, ProcessBackend(), stop_timeout_s=3)
    shutil.rmtree(state_dir(profile), ignore_errors=True)  # records, logs and fingerprints


def perturbed_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    weights = load_file(str(source / "model.safetensors"))
    rng = np.random.default_rng(7)
    changed = {k: (v + rng.normal(0, 0.2, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
               for k, v in weights.items()}
    save_file(changed, str(target / "model.safetensors"))
    return target


def write_profile(directory: Path, name: str, endpoint: str, revision: str, port: int) -> Path:
    data = {
        "name": name, "hf_cache": str(directory / "cache"), "hub": {"endpoint": endpoint},
        "models": {"tiny": {"id": "acme/tiny-embedder", "task": "embed", "revision": revision}},
        "tenants": {"t": {}},
        "deployments": [{"name": "tiny", "tenant": "t", "model": "tiny", "placement": "cpu", "runtime": "fallback",
                         "port": port, "tuning": {"max_batch_tokens": 1024}, "env": {"HF_HUB_OFFLINE": "1"}}],
        "gateway": {"port": free_port()},
    }
    path = directory / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_new_revision_that_moves_the_vectors_is_refused_unless_accepted(
        tmp_path: Path, hub_root: Path, online: None, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    v2 = perturbed_copy(hub_root / "acme" / "tiny-embedder", tmp_path / "v2")
    port = free_port()
    with hub_standin(hub_root) as hub:
        hub.revisions["acme/tiny-embedder@v2"] = v2
        profile = write_profile(tmp_path, name, hub.endpoint, "v1", port)
        assert main(["apply", str(profile), "--backend", "process", "--timeout", "180"]) == 0
        recorded = fingerprint.load(name, "tiny")
        assert recorded is not None and recorded.computes["revision"] == "v1" and len(recorded.outputs) == 6
        assert main(["apply", str(profile), "--backend", "process"]) == 0  # unchanged: a no-op
        assert "nothing to change" in capsys.readouterr().out
        assert fingerprint.load(name, "tiny") == recorded

        # The new revision on a new port: the v1 instance serves on while v2 is started and measured.
        # (Replacing on the same port stops v1 first, and a refusal then has to restart it.)
        new_port = free_port()
        profile.write_text(profile.read_text().replace("revision: v1", "revision: v2")
                           .replace(f"port: {port}", f"port: {new_port}"))
        assert main(["apply", str(profile), "--backend", "process", "--timeout", "180"]) == 1
        err = capsys.readouterr().err
        assert "tiny would compute different embeddings (revision 'v1' -> 'v2'); beyond cosine 0.99" in err
        figures = re.findall(r"probe (\d) '(.+?)': cosine (-?[0-9.]+)", err)
        assert [f[0] for f in figures] == ["0", "1", "2", "3", "4", "5"]
        assert figures[1][1] == "季度报告显示收入增长了百分之十二。"
        assert all(float(f[2]) < 0.99 for f in figures) and "rolled back" in err
        assert "--accept-embedding-change" in err
        assert fingerprint.load(name, "tiny") == recorded  # rolled back: the v1 instance serves on
        assert httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": fingerprint.PROBES[0]},
                          headers=bearer(name, "tiny"), timeout=30).status_code == 200
        assert main(["apply", str(profile), "--backend", "process", "--timeout", "180",
                     "--accept-embedding-change"]) == 0
    accepted = fingerprint.load(name, "tiny")
    assert accepted is not None and accepted.computes["revision"] == "v2"
    assert accepted.last_drift and "revision 'v1' -> 'v2'" in accepted.last_drift
    capsys.readouterr()
    assert main(["status", name, "--backend", "process"]) == 0
    shown = capsys.readouterr().out
    assert f"fingerprint {name}/tiny: recorded" in shown and "last drift: drift after revision 'v1' -> 'v2'" in shown


def test_rerank_drift_is_measured_on_scores() -> None:
    old = Fingerprint(deployment="r", task="rerank", computes={}, outputs=[0.9, 0.1, 0.5, 0.2, 0.3, 0.4],
                      recorded_at=0.0)
    same, figures = drift(old, "rerank", [0.91, 0.1, 0.5, 0.2, 0.3, 0.4])
    moved, _ = drift(old, "rerank", [0.5, 0.1, 0.5, 0.2, 0.3, 0.4])
    assert not same and moved
    assert figures[0].endswith("score 0.9000 -> 0.9100 (delta 0.0100)")


def test_what_a_deployment_computes_includes_dtype_and_runtime() -> None:
    from tei_manager.core.plan import ModelCache, ModelSource, RuntimeSettings

    inst = InstancePlan(name="a", profile="p", deployment="a", tenant="t", model_key="m",
                        model=ModelSource(hub_id="x/y", revision="abc"), served_model_name="x/y", task="embed",
                        runtime="fallback", image="", bind="127.0.0.1", host_port=1,
                        settings=RuntimeSettings(served_model_name="x/y", max_batch_tokens=1,
                                                 max_concurrent_requests=1, max_client_batch_size=1,
                                                 dtype="bfloat16"),
                        hf_cache=ModelCache(volume="v"))
    changed = inst.model_copy(update={"settings": inst.settings.model_copy(update={"dtype": "float32"})})
    assert fingerprint.changes(fingerprint.computes(inst), fingerprint.computes(changed)) == \
        ["dtype 'bfloat16' -> 'float32'"]
