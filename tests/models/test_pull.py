"""`models pull|ls|rm|export|import` with the real huggingface_hub client.

No model hub is reachable here: a stand-in on loopback (tests/fixtures/hub_standin.py) serves the
hub's file API (listing, HEAD metadata with ETag / X-Linked-Etag, ranged GETs) for a tiny model.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.hub_standin import commit_of, hub_standin

from tei_manager.cli import output
from tei_manager.cli.app import main
from tei_manager.models.sizing import size_from_files
from tei_manager.models.source import locate
from tei_manager.models.store import ModelStoreError, complete, pull
from tei_manager.profiles import load_profile

REPO = "acme/tiny-embedder"
FOLDER = "models--acme--tiny-embedder"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    for console in (output.console, output.err_console):
        monkeypatch.setattr(console, "width", 300)


def write_profile(tmp_path: Path, endpoint: str, *, cache: Path | None = None, revision: str = "main",
                  hf_cache: str | None = None) -> Path:
    profile = tmp_path / "p.yaml"
    profile.write_text(f"""
name: pulled
hf_cache: {hf_cache or cache or tmp_path / "cache"}
hub: {{endpoint: "{endpoint}", max_workers: 2}}
models:
  m: {{id: {REPO}, task: embed, revision: {revision}}}
tenants: {{t: {{}}}}
deployments:
  - {{tenant: t, model: m, placement: cpu}}
""")
    return profile


def test_pull_fetches_the_pinned_revision_with_progress_and_is_then_a_no_op(
        tmp_path: Path, hub_root: Path, online: None, capsys: pytest.CaptureFixture[str]) -> None:
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path, hub.endpoint)
        assert main(["models", "pull", str(profile)]) == 0
        first = capsys.readouterr().out
        before = len(hub.requests)
        assert main(["models", "pull", str(profile)]) == 0
        again = capsys.readouterr().out
        assert not [r for r in hub.requests[before:] if r.startswith("GET") and "/resolve/" in r]  # no file twice
    snapshot = tmp_path / "cache" / FOLDER / "snapshots" / commit_of("main")
    weights = hub_root / "acme" / "tiny-embedder" / "model.safetensors"
    assert (snapshot / "model.safetensors").read_bytes() == weights.read_bytes()
    assert (tmp_path / "cache" / FOLDER / "refs" / "main").read_text() == commit_of("main")
    assert "m: model.safetensors" in first  # a progress bar per file
    assert "files downloaded" in first and "already there" in again

    assert main(["models", "ls", str(profile)]) == 0
    listing = capsys.readouterr().out
    assert REPO in listing and "complete" in listing
    assert main(["models", "rm", REPO, "--profile", str(profile)]) == 0
    assert not (tmp_path / "cache" / FOLDER).exists()
    assert main(["models", "ls", str(profile)]) == 0
    assert "missing: run `models pull`" in capsys.readouterr().out


def _partials(blobs: Path) -> dict[Path, int]:
    """Partly downloaded files and their sizes; a small file may finish (and be renamed) while we look."""
    sizes: dict[Path, int] = {}
    for path in blobs.glob("*.incomplete"):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if size > 0:
            sizes[path] = size
    return sizes


def test_an_interrupted_pull_resumes_where_it_stopped(tmp_path: Path, hub_root: Path) -> None:
    """The pull runs in its own process and is killed mid-file, as Ctrl-C or a lost SSH session would;
    the next pull asks the hub only for the rest (a Range request) and verifies the whole file."""
    weights = (hub_root / "acme" / "tiny-embedder" / "model.safetensors").read_bytes()
    cut = len(weights) // 2
    with hub_standin(hub_root) as hub:
        hub.stall_at["model.safetensors"] = cut
        profile = write_profile(tmp_path, hub.endpoint)
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen([sys.executable, "-m", "tei_manager.cli.app", "models", "pull", str(profile)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert hub.stalled.wait(60), "the pull never reached the stall"
        blobs = tmp_path / "cache" / FOLDER / "blobs"
        deadline = time.monotonic() + 30
        while not _partials(blobs):
            assert child.poll() is None and time.monotonic() < deadline, "no partial file was written"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait()
        spec = load_profile(profile)
        assert not complete(tmp_path / "cache", spec.models["m"])
        kept = max(_partials(blobs).values())  # the stalled weights; a small file may be cut too
        assert 0 < kept <= cut

        del hub.stall_at["model.safetensors"]
        from huggingface_hub import constants

        offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
        try:
            pulled = pull(spec)
        finally:
            constants.HF_HUB_OFFLINE = offline
        assert ("model.safetensors", f"bytes={kept}-") in hub.ranges
    assert pulled[0].fetched >= 1
    assert complete(tmp_path / "cache", spec.models["m"])
    snapshot = tmp_path / "cache" / FOLDER / "snapshots" / commit_of("main")
    assert (snapshot / "model.safetensors").read_bytes() == weights


def test_a_corrupt_download_is_refused_and_deleted(tmp_path: Path, hub_root: Path, online: None) -> None:
    with hub_standin(hub_root) as hub:
        hub.corrupt.add("model.safetensors")
        spec = load_profile(write_profile(tmp_path, hub.endpoint))
        with pytest.raises(ModelStoreError) as refused:
            pull(spec)
    assert "model.safetensors: sha256" in refused.value.what and "does not match the hub's" in refused.value.what
    assert "deleted" in refused.value.what and refused.value.fix
    assert not complete(tmp_path / "cache", spec.models["m"])
    snapshot = tmp_path / "cache" / FOLDER / "snapshots" / commit_of("main")
    assert not (snapshot / "model.safetensors").exists()


def test_a_volume_cache_needs_a_download_dir(tmp_path: Path, hub_root: Path, online: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    profile = write_profile(tmp_path, "http://127.0.0.1:9", hf_cache="some-volume")
    assert main(["models", "pull", str(profile)]) == 1
    err = capsys.readouterr().err
    assert "hf_cache is the Docker volume 'some-volume'" in err and "hub.download_dir" in err


def test_an_unknown_model_on_the_hub_is_a_clear_error(tmp_path: Path, hub_root: Path, online: None) -> None:
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path, hub.endpoint)
        profile.write_text(profile.read_text().replace(REPO, "acme/nope"))
        with pytest.raises(ModelStoreError) as refused:
            pull(load_profile(profile))
    assert refused.value.where and "acme/nope@main" in refused.value.where
    assert "no such model" in refused.value.what


def test_export_then_import_on_a_host_without_the_hub(tmp_path: Path, hub_root: Path, online: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "models.tar"
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path, hub.endpoint)
        assert main(["models", "export", str(profile), "-o", str(archive)]) == 0  # pulls first
    assert "exported 1 model(s)" in capsys.readouterr().out
    other = tmp_path / "airgapped"
    other.mkdir()
    offline = write_profile(other, "http://127.0.0.1:9", cache=other / "cache")  # no hub anywhere
    assert main(["models", "import", str(archive), "--profile", str(offline)]) == 0
    assert complete(other / "cache", load_profile(offline).models["m"])

    tampered = tmp_path / "tampered.tar"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if data is not None and "/blobs/" in member.name and member.size > 10_000:  # the weights
                raw = bytearray(data.read())
                raw[-1] ^= 0xFF
                data = io.BytesIO(bytes(raw))
            dst.addfile(member, data)
    third = tmp_path / "third"
    assert main(["models", "import", str(tampered), "--dir", str(third)]) == 1
    assert "does not match its sha256" in capsys.readouterr().err
    assert not (third / FOLDER).exists()


def test_a_modelscope_model_lands_in_the_cache_layout_the_runtimes_read(
        tmp_path: Path, hub_root: Path, online: None) -> None:
    """ModelScope's client cannot be pointed at loopback: the stand-in follows its documented file API."""
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path, hub.endpoint)
        profile.write_text(profile.read_text().replace(
            f'hub: {{endpoint: "{hub.endpoint}"', f'hub: {{endpoint: "http://127.0.0.1:9", '
                                                  f'modelscope_endpoint: "{hub.endpoint}"').replace(
            "revision: main}", "source: modelscope}"))
        spec = load_profile(profile)
        remote = locate("m", spec.models["m"], spec, network=True)
        assert remote is not None and remote.where == f"files on {hub.endpoint}"
        sized_remotely = size_from_files(REPO, remote.files)  # ranged reads of ModelScope's file API
        (pulled,) = pull(spec)
        assert [r for r in hub.requests if r.startswith("GET /api/v1/models/acme/tiny-embedder/repo")]
    assert pulled.source == f"modelscope {hub.endpoint}" and pulled.fetched == pulled.files
    assert complete(tmp_path / "cache", spec.models["m"])  # refs/main -> the snapshot, as TEI looks it up
    weights = hub_root / "acme" / "tiny-embedder" / "model.safetensors"
    assert (pulled.path / "model.safetensors").read_bytes() == weights.read_bytes()
    cached = locate("m", spec.models["m"], spec, network=False)
    assert cached is not None and cached.where == f"files in the model cache {tmp_path / 'cache'}"
    assert size_from_files(REPO, cached.files) == sized_remotely
