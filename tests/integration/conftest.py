"""Fixtures for the integration suite: a real Docker Engine, the local worker image, tiny real
models, unique profile names and free ports, and cleanup by label even when a test fails.

No Docker Engine means these tests FAIL (with the fix), never skip.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fixtures.tiny_models import build_tiny_embedder, build_tiny_reranker

sys.path.insert(0, str(Path(__file__).parent))
from it_support import cleanup_profile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def docker_client() -> Any:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.fail(f"the integration tests need a Docker Engine and none answers ({exc}); "
                    "run ./scripts/ensure-docker.sh or set DOCKER_HOST", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker_image(docker_client: Any) -> str:
    from docker_image import ensure_worker_image

    return ensure_worker_image()


@pytest.fixture(scope="session")
def models_dir() -> Iterator[Path]:
    """Tiny bge-m3 / bge-reranker-v2-m3 shaped models, readable by the worker image's
    unprivileged user (pytest's own tmp dirs are 0700, so they could not be bind-mounted)."""
    root = Path(tempfile.mkdtemp(prefix="tei-manager-it-models-"))
    build_tiny_embedder(root / "embedder")
    build_tiny_reranker(root / "reranker")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Process records and event logs of each test live in their own directory; worker processes
    started by the process backend can import the repository's packages."""
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))


@pytest.fixture
def profile_name(docker_client: Any) -> Iterator[str]:
    """A unique profile name; every container and volume of it is removed afterwards."""
    name = f"it-{uuid.uuid4().hex[:8]}"
    yield name
    cleanup_profile(docker_client, name)


@pytest.fixture
def stub_image(docker_client: Any) -> Iterator[Callable[[str], str]]:
    """Tag a tiny local image (one file, entrypoint text-embeddings-router) under a given name.

    It stands in for a TEI image, which cannot be pulled here: containers can be created from it
    and inspected, and starting one fails for lack of a GPU before its entrypoint would matter.
    """
    made: list[str] = []

    def make(reference: str) -> str:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            data = b"stand-in for a TEI image in tests\n"
            info = tarfile.TarInfo("README")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        repository, _, tag = reference.rpartition(":")
        docker_client.api.import_image_from_data(
            buffer.getvalue(), repository=repository, tag=tag,
            changes=['ENTRYPOINT ["text-embeddings-router"]', 'CMD ["--json-output"]'])
        made.append(reference)
        return reference

    yield make
    for reference in made:
        try:
            docker_client.images.remove(reference, force=True)
        except Exception:
            pass


