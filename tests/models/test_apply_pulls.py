"""`apply` pulls missing models before starting instances; an air-gapped host applies from an archive.

Real fallback-worker processes (process backend) load the tiny model from the shared cache. No model
hub is reachable here: a stand-in on loopback (tests/fixtures/hub_standin.py) plays the mirror, and
the air-gapped half runs with no mirror at all (the profile's endpoint is a closed port).
"""

from __future__ import annotations

import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.hub_standin import hub_standin

from tei_manager.cli import output
from tei_manager.cli.app import main
from tei_manager.instance_keys import bearer
from tei_manager.state import state_dir

pytestmark = [pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Profile names used by a test; their worker processes are stopped afterwards."""
    used: list[str] = []
    yield used
    from tei_manager.backends.process import ProcessBackend
    from tei_manager.orchestrator import down

    for name in used:
        down(name, ProcessBackend(), stop_timeout_s=3)
        shutil.rmtree(state_dir(name), ignore_errors=True)  # records, logs and fingerprints


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    for console in (output.console, output.err_console):
        monkeypatch.setattr(console, "width", 300)


def write_profile(directory: Path, name: str, endpoint: str) -> tuple[Path, int]:
    port = free_port()
    data = {
        "name": name,
        "hf_cache": str(directory / "cache"),
        "hub": {"endpoint": endpoint},
        "models": {"tiny": {"id": "acme/tiny-embedder", "task": "embed"}},
        "tenants": {"t": {}},
        "deployments": [{"name": "tiny", "tenant": "t", "model": "tiny", "placement": "cpu", "runtime": "fallback",
                         "port": port, "tuning": {"max_batch_tokens": 1024},
                         # What an air-gapped host sets: the runtime reads the cache and never the network.
                         "env": {"HF_HUB_OFFLINE": "1"}}],
        "gateway": {"port": free_port()},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, port


def embeds(name: str, port: int) -> bool:
    response = httpx.post(f"http://127.0.0.1:{port}/embed", json={"inputs": "hello"},
                          headers=bearer(name, "tiny"), timeout=60)
    return response.status_code == 200 and len(response.json()[0]) == 32


def test_apply_pulls_first_and_an_airgapped_host_applies_from_an_archive(
        tmp_path: Path, hub_root: Path, online: None, names: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    first = f"pull-{uuid.uuid4().hex[:6]}"
    names.append(first)
    (tmp_path / "a").mkdir()
    with hub_standin(hub_root) as hub:
        profile, port = write_profile(tmp_path / "a", first, hub.endpoint)
        assert main(["apply", str(profile), "--backend", "process", "--timeout", "180"]) == 0
        downloads = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
    out = capsys.readouterr().out
    assert "files downloaded" in out and "tiny: model.safetensors" in out and f"applied {first}" in out
    assert any(r.endswith("model.safetensors") for r in downloads)
    assert embeds(first, port)

    archive = tmp_path / "models.tar"
    assert main(["models", "export", str(profile), "-o", str(archive)]) == 0  # the mirror is gone: from the cache

    second = f"gap-{uuid.uuid4().hex[:6]}"
    names.append(second)
    (tmp_path / "b").mkdir()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: no mirror, no hub
    airgapped, port = write_profile(tmp_path / "b", second, dead)
    assert main(["models", "import", str(archive), "--profile", str(airgapped)]) == 0
    capsys.readouterr()
    assert main(["plan", str(airgapped), "--backend", "process"]) == 0
    assert f"files in the model cache {tmp_path / 'b' / 'cache'}" in capsys.readouterr().out
    assert main(["apply", str(airgapped), "--backend", "process", "--timeout", "180"]) == 0
    out = capsys.readouterr().out
    assert f"applied {second}" in out and "downloaded" not in out
    assert embeds(second, port)
