"""The install/CI scripts and the local fallback-worker image they build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from docker_image import REPO, ensure_worker_image
from fixtures.tiny_models import minilm_path

SCRIPTS = ["install.sh", "ensure-docker.sh", "test.sh", "quickstart.sh", "build-worker-image.sh"]
HASH_LABEL = "org.tei-manager.worker.content-hash"


@pytest.mark.parametrize("script", [*(f"scripts/{s}" for s in SCRIPTS), ".ci/run"])
def test_scripts_are_executable_strict_bash(script: str) -> None:
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable (chmod +x {script})"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_ci_runs_the_readme_test_command() -> None:
    assert "exec ./scripts/test.sh" in (REPO / ".ci/run").read_text()
    assert "./scripts/test.sh" in (REPO / "README.md").read_text()


def test_every_pip_install_is_constrained_to_the_cpu_torch() -> None:
    constraints = (REPO / "scripts/constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints
    installers = [p for p in (REPO / "scripts").glob("*.sh") if "-m pip install" in p.read_text()]
    assert installers == [REPO / "scripts/install.sh"]  # the one place pip runs
    text = installers[0].read_text()
    assert text.index('export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"') < text.index("-m pip install")


@pytest.mark.slow
def test_worker_rootfs_holds_the_worker_and_leaves_out_the_rest(tmp_path: Path) -> None:
    staging = tmp_path / "rootfs"
    subprocess.run([sys.executable, str(REPO / "scripts/worker_rootfs.py"), "layout", str(staging)], check=True,
                   capture_output=True)
    host = set(Path(f"{staging}.host.list").read_bytes().decode().split("\0"))
    generated = set(Path(f"{staging}.staging.list").read_bytes().decode().split("\0"))
    site = Path(__import__("sysconfig").get_paths()["purelib"]).relative_to("/").as_posix()

    for needed in ("torch/lib/libtorch_cpu.so", "torch/bin/torch_shm_manager", "transformers/__init__.py",
                   "tokenizers/__init__.py", "uvicorn/__init__.py", "starlette/__init__.py"):
        assert f"{site}/{needed}" in host, needed
    for unwanted in ("pytest", "sentence_transformers", "textual", "torch/include", "torch/test",
                     "tei_manager", "__editable__.tei_manager-0.1.0.pth"):
        assert f"{site}/{unwanted}" not in host, unwanted
    assert not any("fallback_worker" in p for p in host | generated)  # a layer of its own
    assert "usr/bin/sh" in generated and "usr/local/bin/tei-fallback-worker" in generated
    assert any(p.endswith("/libc.so.6") for p in host)
    assert ":10001:10001:" in (staging / "etc/passwd").read_text()
    assert (staging / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (staging / "home/worker").stat().st_uid == 10001


def _docker(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout.strip()


@pytest.mark.docker
@pytest.mark.slow
def test_worker_image_serves_minilm_as_an_unprivileged_user() -> None:
    image = ensure_worker_image()
    minilm_dir = minilm_path()
    config = json.loads(_docker("image", "inspect", "--format", "{{json .Config}}", image))
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["tei-fallback-worker"]
    assert config["Healthcheck"]["Test"] == ["CMD", "tei-worker-healthcheck"]
    _, expected_hash, site_dir = subprocess.run([sys.executable, str(REPO / "scripts/worker_rootfs.py"), "hash"],
                                                check=True, capture_output=True, text=True).stdout.split()
    assert config["Labels"][HASH_LABEL] == expected_hash
    where = _docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
                    "import fallback_worker; print(fallback_worker.__file__)")
    assert where == f"{site_dir}/fallback_worker/__init__.py"

    container = _docker("run", "-d", "--rm", "--memory", "2g", "--cpus", "2", "-p", "127.0.0.1::80",
                        "-v", f"{minilm_dir}:/models/minilm:ro", image,
                        "--model-id", "/models/minilm", "--port", "80", "--hostname", "0.0.0.0")
    try:
        port = _docker("port", container, "80/tcp").splitlines()[0].rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            state = _docker("inspect", "--format", "{{.State.Status}}", container)
            if state != "running" or time.monotonic() > deadline:
                pytest.fail(f"worker not healthy (state {state}); logs:\n{_docker('logs', container)[-3000:]}")
            time.sleep(0.5)

        request = urllib.request.Request(f"{base}/embed", data=json.dumps({"inputs": ["hello", "world"]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            vectors = json.load(response)
        assert [len(v) for v in vectors] == [384, 384]

        deadline = time.monotonic() + 60  # the image's HEALTHCHECK (every 10 s) must agree
        while (health := _docker("inspect", "--format", "{{.State.Health.Status}}", container)) != "healthy":
            assert health == "starting" and time.monotonic() < deadline, f"health check says {health}"
            time.sleep(1)
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
