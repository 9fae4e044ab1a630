"""The local images, for tests that run instances or the gateway on a real Docker Engine.

    from docker_image import ensure_gateway_image, ensure_worker_image

    image = ensure_worker_image()    # e.g. "tei-manager/fallback-worker:dev", built or reused
    image = ensure_gateway_image()   # e.g. "tei-manager/tei-manager:dev" (tei-manager itself)

Both run scripts/build-worker-image.sh (`--target worker` / `--target gateway`) with this
interpreter (whose site-packages the image is made from); the script reuses the tagged image when
its content hash label is current (about a second), else builds it (about 30 s). The tags are
$TEI_MANAGER_WORKER_IMAGE (default tei-manager/fallback-worker:dev) and $TEI_MANAGER_GATEWAY_IMAGE
(default tei-manager/tei-manager:dev).

Tests that need Docker must fail, never skip, when no engine is reachable: this raises
`DockerUnavailable` (with the fix) rather than calling pytest.skip.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build-worker-image.sh"
DEFAULT_TAG = "tei-manager/fallback-worker:dev"
DEFAULT_GATEWAY_TAG = "tei-manager/tei-manager:dev"
BUILD_TIMEOUT_S = 1200


class DockerUnavailable(RuntimeError):
    """No Docker Engine answers; tests that need one fail with this."""


class WorkerImageBuildError(RuntimeError):
    """scripts/build-worker-image.sh failed (either target); the message carries the end of its output."""


def worker_image_tag() -> str:
    return os.environ.get("TEI_MANAGER_WORKER_IMAGE") or DEFAULT_TAG


def gateway_image_tag() -> str:
    return os.environ.get("TEI_MANAGER_GATEWAY_IMAGE") or DEFAULT_GATEWAY_TAG


def require_docker() -> None:
    """Raise DockerUnavailable, saying why and how to fix it, unless `docker info` succeeds."""
    fix = "run ./scripts/ensure-docker.sh (./scripts/test.sh does it), or point DOCKER_HOST at a running engine"
    if shutil.which("docker") is None:
        raise DockerUnavailable(f"the docker CLI is not installed; {fix}")
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise DockerUnavailable(f"`docker info` did not answer within 30 s; {fix}") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DockerUnavailable(f"no Docker Engine is reachable (`docker info`: {detail}); {fix}")


@functools.cache
def ensure_worker_image() -> str:
    """Build the worker image if it is missing or stale and return its tag (once per session)."""
    return _build("worker", TEI_MANAGER_WORKER_IMAGE=worker_image_tag())


@functools.cache
def ensure_gateway_image() -> str:
    """Build the tei-manager (gateway) image if it is missing or stale and return its tag."""
    return _build("gateway", TEI_MANAGER_GATEWAY_IMAGE=gateway_image_tag())


def _build(target: str, **tag_env: str) -> str:
    require_docker()
    env = dict(os.environ, PYTHON=sys.executable, **tag_env)
    script = BUILD_SCRIPT.relative_to(REPO)
    try:
        proc = subprocess.run(
            [str(BUILD_SCRIPT), "--target", target], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise WorkerImageBuildError(
            f"{script} --target {target} took more than {BUILD_TIMEOUT_S} s; run it by hand to see where it stops"
        ) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise WorkerImageBuildError(
            f"{script} --target {target} failed (exit {proc.returncode}); run it by hand to reproduce:\n{tail}"
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise WorkerImageBuildError(f"{script} --target {target} printed no image tag:\n{proc.stderr[-2000:]}")
    return lines[-1]
