"""Which backend a command uses: `--backend auto|docker|process`.

- `docker` / `process`: that one (docker fails clearly when the engine does not answer).
- `auto` for apply: the backend that already runs instances of this profile, else Docker when
  the engine answers, else local processes.  So a profile started with `--backend process`
  stays there on a host that also has Docker, and never gets a second copy in containers.
- `auto` for status/down/logs: every backend that can be read (Docker when reachable, and the
  process records), because the instances may live in either.
"""

from __future__ import annotations

from typing import Literal

from tei_manager.backends.base import Backend
from tei_manager.backends.process import ProcessBackend
from tei_manager.errors import HostError

BackendChoice = Literal["auto", "docker", "process"]


def open_docker(docker_url: str | None = None) -> Backend:
    from tei_manager.backends.docker import DockerBackend

    return DockerBackend(docker_url)


def try_docker(docker_url: str | None = None) -> tuple[Backend | None, str | None]:
    """The Docker backend, or None and why it is unavailable."""
    try:
        return open_docker(docker_url), None
    except HostError as exc:
        return None, exc.what
    except ImportError as exc:  # the docker SDK is a dependency, but be clear if it is missing
        return None, f"the docker Python package is not installed ({exc})"


def backend_for_apply(choice: BackendChoice, profile: str, docker_url: str | None = None) -> Backend:
    if choice == "docker":
        return open_docker(docker_url)
    process = ProcessBackend()
    if choice == "process":
        return process
    if process.list(profile):
        return process
    docker, _why = try_docker(docker_url)
    return docker if docker is not None else process


def backends_for_reading(choice: BackendChoice, docker_url: str | None = None) -> list[Backend]:
    if choice == "docker":
        return [open_docker(docker_url)]
    if choice == "process":
        return [ProcessBackend()]
    docker, _why = try_docker(docker_url)
    return ([docker] if docker is not None else []) + [ProcessBackend()]
