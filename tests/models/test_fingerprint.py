"""Index-safe rollouts: a deployment's embedding fingerprint guards later applies.

Real fallback-worker processes (process backend). No model hub is reachable here: a stand-in on
loopback (tests/fixtures/hub_standin.py) serves revision v1 of a tiny model and, as v2, the same
model with perturbed weights (what a new upstream revision looks like to stored vectors).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.hub_standin import hub_standin
from fixtures.tiny_models import perturbed_copy
from test_apply_pulls import free_port  # type: ignore[import-not-found]

from tei_manager.cli import output
from tei_manager.cli.app import main
from tei_manager.core.plan import InstancePlan
from tei_manager.instance_keys import bearer
from tei_manager.models import fingerprint
from tei_manager.models.fingerprint import EmbeddingDriftError, Fingerprint, FingerprintGuard, Thresholds, drift
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


def write_profile(directory: Path, name: str, endpoint: str, revision: str, port: int, **deployment: object) -> Path:
    data: dict[str, Any] = {
        "name": name, "hf_cache": str(directory / "cache"), "hub": {"endpoint": endpoint},
        "models": {"tiny": {"id": "acme/tiny-embedder", "task": "embed", "revision": revision}},
        "tenants": {"t": {}},
        "deployments": [{"name": "tiny", "tenant": "t", "model": "tiny", "placement": "cpu", "runtime": "fallback",
                         "port": port, "tuning": {"max_batch_tokens": 1024}, "env": {"HF_HUB_OFFLINE": "1"}}],
        "gateway": {"port": free_port()},
    }
    data["deployments"][0].update(deployment)
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
    assert accepted.last_drift is not None and accepted.last_drift.changed == ["revision 'v1' -> 'v2'"]
    capsys.readouterr()
    assert main(["status", name, "--backend", "process"]) == 0
    shown = capsys.readouterr().out
    assert f"fingerprint {name}/tiny: recorded" in shown
    assert "last drift: drift after revision 'v1' -> 'v2': lowest cosine" in shown
    assert main(["status", name, "--backend", "process", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    recorded_json = row["fingerprint"]
    assert row["deployment"] == "tiny" and 0 <= recorded_json["age_s"] < 600
    assert recorded_json["computes"]["revision"] == "v2" and recorded_json["recorded_at"].endswith("+00:00")
    last = recorded_json["last_drift"]
    assert last["what_changed"] == ["revision 'v1' -> 'v2'"] and last["measure"] == "cosine"
    assert last["beyond"] is True and last["worst"] < last["threshold"] == 0.99
    assert len(last["probes"]) == 6 and last["accepted_at"].endswith("+00:00")


def test_a_dtype_change_beyond_the_deployments_own_threshold_is_refused_unless_accepted(
        tmp_path: Path, hub_root: Path, online: None, name: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # float32 -> bfloat16 keeps 8 bits of mantissa: the tiny model's vectors keep a cosine of about
    # 0.99999 with the float32 ones, which the default 0.99 lets through. A deployment that wants
    # no change at all says so with its own, stricter threshold. Both dtypes are explicit: the
    # worker's own default on CPU is bfloat16 where it measures faster than float32, else float32.
    # The torch engine, because OpenVINO keeps this tiny model's small matmuls in float32 whatever
    # the hint, so its vectors would not move at all.
    strict = {"min_cosine": 0.9999995}
    port = free_port()
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path, name, hub.endpoint, "v1", port, fingerprint=strict,
                                tuning={"max_batch_tokens": 1024, "dtype": "float32",
                                        "extra_args": ["--engine", "torch"]})
        assert main(["apply", str(profile), "--backend", "process", "--timeout", "180"]) == 0
        recorded = fingerprint.load(name, "tiny")
        assert recorded is not None and recorded.computes["dtype"] == "float32"

        # The same port: the float32 instance stops first, and the refusal has to bring it back.
        profile.write_text(profile.read_text().replace("dtype: float32", "dtype: bfloat16"))
        capsys.readouterr()
        assert main(["apply", str(profile), "--backend", "process", "--timeout", "180"]) == 1
        err = capsys.readouterr().err
        assert "tiny would compute different embeddings (dtype 'float32' -> 'bfloat16'); beyond cosine 0.9999995" \
            in err
        cosines = [float(c) for c in re.findall(r"probe \d '.+?': cosine (-?[0-9.]+)", err)]
        assert len(cosines) == 6 and min(cosines) < 0.9999995 and all(c > 0.99 for c in cosines)
        assert "rolled back" in err and "--accept-embedding-change" in err
        assert fingerprint.load(name, "tiny") == recorded
        assert httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": fingerprint.PROBES[0]},
                          headers=bearer(name, "tiny"), timeout=30).status_code == 200

        assert main(["apply", str(profile), "--backend", "process", "--timeout", "180",
                     "--accept-embedding-change"]) == 0
        accepted = fingerprint.load(name, "tiny")
        assert accepted is not None and accepted.computes["dtype"] == "bfloat16"
        assert accepted.last_drift is not None and accepted.last_drift.changed == ["dtype 'float32' -> 'bfloat16'"]
        assert accepted.last_drift.beyond and accepted.last_drift.threshold == 0.9999995

        # Unchanged: nothing is replaced and nothing is measured.
        def no_measuring(inst: InstancePlan, *, timeout_s: float = 60.0) -> list[Any]:
            raise AssertionError(f"an unchanged apply measured {inst.name}")

        monkeypatch.setattr(fingerprint, "measure", no_measuring)
        capsys.readouterr()
        assert main(["apply", str(profile), "--backend", "process"]) == 0
        assert "nothing to change" in capsys.readouterr().out
        assert fingerprint.load(name, "tiny") == accepted


@contextmanager
def embedder_standin(vectors: list[list[float]]) -> Iterator[int]:
    """An instance on loopback that answers /embed with fixed vectors; yields its port.

    A stand-in, said so: two real workers of one deployment compute the same vectors on this host;
    replicas only differ on other hardware (another GPU type, image or attention kernel)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the stdlib's name
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.dumps(vectors).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def replica(index: int, port: int, revision: str) -> InstancePlan:
    from tei_manager.core.plan import ModelCache, ModelSource, RuntimeSettings

    return InstancePlan(name="tiny" if index == 0 else f"tiny-{index}", profile="p", deployment="tiny", replica=index,
                        tenant="t", model_key="m", model=ModelSource(hub_id="acme/tiny", revision=revision),
                        served_model_name="acme/tiny", task="embed", runtime="fallback", image="", bind="127.0.0.1",
                        host_port=port, settings=RuntimeSettings(served_model_name="acme/tiny", max_batch_tokens=1,
                                                                 max_concurrent_requests=1, max_client_batch_size=1),
                        hf_cache=ModelCache(volume="v"))


def test_every_new_replica_is_checked_not_only_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path))
    before = [[1.0, 0.0, 0.0]] * len(fingerprint.PROBES)
    elsewhere = [[0.6, 0.8, 0.0]] * len(fingerprint.PROBES)  # cosine 0.6 with `before`
    fingerprint.save("p", Fingerprint(deployment="tiny", task="embed", computes=fingerprint.computes(
        replica(0, 1, "v1")), outputs=before, recorded_at=1.0))
    with embedder_standin(before) as first, embedder_standin(elsewhere) as second:
        new = [replica(0, first, "v2"), replica(1, second, "v2")]
        guard = FingerprintGuard("p")
        guard.check(new[0])  # replica 0 computes what was recorded
        with pytest.raises(EmbeddingDriftError) as refused:
            guard.check(new[1])
        assert refused.value.where == "tiny-1"
        assert "tiny (replica 1, tiny-1) would compute different embeddings (revision 'v1' -> 'v2')" in \
            refused.value.what and "cosine 0.600000" in refused.value.what

        accepting = FingerprintGuard("p", accept_change=True)
        for inst in new:
            accepting.check(inst)
        accepting.record(new)
    saved = fingerprint.load("p", "tiny")
    assert saved is not None and saved.outputs == before  # the first replica's vectors
    assert saved.last_drift is not None and saved.last_drift.worst == pytest.approx(0.6)  # the worst replica's


def test_rerank_drift_is_measured_on_scores() -> None:
    old = Fingerprint(deployment="r", task="rerank", computes={}, outputs=[0.9, 0.1, 0.5, 0.2, 0.3, 0.4],
                      recorded_at=0.0)
    same = drift(old, "rerank", [0.91, 0.1, 0.5, 0.2, 0.3, 0.4])
    moved = drift(old, "rerank", [0.5, 0.1, 0.5, 0.2, 0.3, 0.4])
    assert not same.beyond and moved.beyond and moved.worst == pytest.approx(0.4)
    assert same.figures[0].endswith("score 0.900000 -> 0.910000 (delta 0.010000)")
    strict = drift(old, "rerank", [0.91, 0.1, 0.5, 0.2, 0.3, 0.4], Thresholds(max_score_delta=0.001))
    assert strict.beyond  # a deployment's own `fingerprint.max_score_delta` is stricter than the default


def test_a_fingerprint_recorded_before_drifts_were_structured_still_guards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path))
    target = fingerprint.path_of("p", "d")
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"deployment": "d", "task": "embed", "computes": {"revision": "v1"},
                                  "outputs": [[1.0, 0.0]], "recorded_at": 5.0, "last_drift": "drift after ..."}))
    old = fingerprint.load("p", "d")
    assert old is not None and old.outputs == [[1.0, 0.0]] and old.last_drift is None


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
