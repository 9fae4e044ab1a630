"""The tei-manager image: the gateway that `export kubernetes` renders runs in it, as rendered.

The image under test is the local build, `scripts/build-worker-image.sh --target gateway`
(tei-manager/tei-manager:dev, about a second when it is up to date). Its registry twin,
docker/tei-manager.Dockerfile, cannot be built here (no registry to pull python:3.11-slim from):
the first tests check that both declare the same user, entry point, health check and port, and
that the tag its documented build gives is the `gateway_image` the export renders by default.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_image import ensure_gateway_image

from tei_manager import __version__
from tei_manager.core.models import KubernetesSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "tei-manager.Dockerfile"
HASH_LABEL = "org.tei-manager.gateway.content-hash"
PROFILE = REPO / "profiles" / "multi-tenant.yaml"
START_TIMEOUT_S = 30


def _docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr.strip()}"
    return proc


@pytest.fixture(scope="module")
def gateway_image() -> str:
    return ensure_gateway_image()


def _dockerfile_instruction(name: str) -> str:
    """The argument of the Dockerfile's (last) NAME instruction."""
    found = re.findall(rf"^{name} (.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert found, f"{DOCKERFILE.name} has no {name} instruction"
    return str(found[-1]).strip()


def test_documented_build_gives_the_default_gateway_image() -> None:
    default = KubernetesSettings().gateway_image
    assert default == f"tei-manager/tei-manager:{__version__}"
    build = f"docker build -f docker/tei-manager.Dockerfile -t {default} ."
    assert build in DOCKERFILE.read_text()
    assert build in (REPO / "docs" / "kubernetes.md").read_text()
    assert (REPO / "docker" / "tei-manager.Dockerfile.dockerignore").is_file()


@pytest.mark.docker
def test_image_runs_tei_manager_unprivileged_without_torch(gateway_image: str) -> None:
    config = json.loads(_docker("image", "inspect", "--format", "{{json .Config}}", gateway_image).stdout)
    # The same contract as the registry build.
    assert config["User"] == _dockerfile_instruction("USER") == "10001:10001"
    assert config["Entrypoint"] == json.loads(_dockerfile_instruction("ENTRYPOINT")) == ["tei-manager"]
    assert config["Healthcheck"]["Test"] == ["CMD", "tei-manager-healthcheck"]
    assert '["tei-manager-healthcheck"]' in _dockerfile_instruction("HEALTHCHECK")
    assert list(config["ExposedPorts"]) == [f"{_dockerfile_instruction('EXPOSE')}/tcp"] == ["8080/tcp"]
    _, expected_hash, site_dir = subprocess.run(
        [sys.executable, str(REPO / "scripts/worker_rootfs.py"), "--target", "gateway", "hash"],
        check=True, capture_output=True, text=True).stdout.split()
    assert config["Labels"][HASH_LABEL] == expected_hash  # built from this checkout's tei_manager/

    run = ("run", "--rm", "--network", "none", gateway_image)
    assert _docker(*run, "--version").stdout.strip() == f"tei-manager {__version__}"
    serve_help = _docker(*run, "serve", "--help").stdout
    assert "--backend" in serve_help and "--port" in serve_help
    probe = ("import os, importlib.util as u, tei_manager; "
             "print(os.getuid(), tei_manager.__file__, [m for m in ('torch', 'transformers', 'fallback_worker') "
             "if u.find_spec(m)])")
    uid, where, present = _docker("run", "--rm", "--network", "none", "--entrypoint", "python3", gateway_image,
                                  "-c", probe).stdout.strip().split(maxsplit=2)
    assert uid == "10001"
    assert where == f"{site_dir}/tei_manager/__init__.py"
    assert present == "[]"


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A directory the image's uid 10001 can read when bind-mounted (pytest's tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="tei-manager-gw-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _export_gateway(out: Path) -> tuple[dict[str, Any], str]:
    """The gateway Deployment's pod spec and the profile its ConfigMap carries, from the real CLI."""
    proc = subprocess.run([sys.executable, "-m", "tei_manager.cli.app", "export", "kubernetes", str(PROFILE),
                           "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deployment = yaml.safe_load((out / "deployment-multi-tenant-gateway.yaml").read_text())
    configmap = yaml.safe_load((out / "configmap-multi-tenant-gateway-profile.yaml").read_text())
    return deployment["spec"]["template"]["spec"], configmap["data"]["profile.yaml"]


def _run_args(pod: dict[str, Any], profile_dir: Path, sa_dir: Path, keys: dict[str, str]
              ) -> tuple[list[str], list[str]]:
    """`docker run` options for the pod's gateway container (its user, security context, env,
    volumes and command, as rendered, with the cluster's parts stood in for) and its arguments."""
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert not security["allowPrivilegeEscalation"]
    args = ["--user", f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}",
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            # The instances' Services do not exist here: with no network the gateway finds them
            # unreachable at once, takes them out of rotation and must still serve.
            "--network", "none"]
    for env in container["env"]:
        if "value" in env:
            args += ["-e", f"{env['name']}={env['value']}"]
        else:  # secretKeyRef: the tenant keys Secret
            args += ["-e", f"{env['name']}={keys[env['valueFrom']['secretKeyRef']['key']]}"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            args += ["-v", f"{profile_dir}:{mount['mountPath']}:ro"]
        elif "emptyDir" in volume:
            args += ["--tmpfs", f"{mount['mountPath']}:uid=10001,gid=10001"]
        else:
            pytest.fail(f"volume {volume} has no stand-in in this test")
    # The kubelet mounts a service account into every pod and `--backend kubernetes` loads it
    # (in-cluster config). No cluster exists here: a stand-in token is enough, because the gateway
    # plans from the profile and never calls the API server.
    args += ["-v", f"{sa_dir}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
             "-e", "KUBERNETES_SERVICE_HOST=10.96.0.1", "-e", "KUBERNETES_SERVICE_PORT=443"]
    command = [*container["command"], *container["args"]]
    return [*args, "--entrypoint", command[0]], command[1:]


# Run in the container (its network is the gateway's loopback): POST /embed with the headers
# given as JSON in argv[1], print the status and the body.
REQUEST = """
import json, sys, urllib.request, urllib.error
headers = {"Content-Type": "application/json", **json.loads(sys.argv[1])}
request = urllib.request.Request("http://127.0.0.1:8080/embed", data=b'{"inputs": "hi"}', headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, response.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


@pytest.mark.docker
def test_exported_gateway_container_serves_in_the_image(gateway_image: str, readable_dir: Path,
                                                        tmp_path: Path) -> None:
    pod, profile_text = _export_gateway(tmp_path / "k8s")
    (container_spec,) = pod["containers"]
    # The export names the default image, the one docs/kubernetes.md builds; the local build stands in.
    assert container_spec["image"] == KubernetesSettings().gateway_image

    profile_dir, sa_dir = readable_dir / "profile", readable_dir / "serviceaccount"
    profile_dir.mkdir()
    (profile_dir / "profile.yaml").write_text(profile_text)
    sa_dir.mkdir()
    for name, text in (("token", "stand-in-token"), ("ca.crt", "stand-in\n"), ("namespace", "multi-tenant")):
        (sa_dir / name).write_text(text)
    for path in [readable_dir, *readable_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    keys = {"FINANCE_API_KEY": f"fin-{uuid.uuid4().hex}", "HR_API_KEY": f"hr-{uuid.uuid4().hex}",
            "MARKETING_API_KEY": f"mkt-{uuid.uuid4().hex}"}

    run_args, command_args = _run_args(pod, profile_dir, sa_dir, keys)
    name = f"tei-manager-gw-{uuid.uuid4().hex[:8]}"
    _docker("run", "-d", "--name", name, *run_args, gateway_image, *command_args)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # The image's HEALTHCHECK command: GET /health on the --port of `tei-manager serve`.
        while _docker("exec", name, "tei-manager-healthcheck", check=False).returncode != 0:
            state = _docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                pytest.fail(f"gateway not answering /health (state {state}); logs:\n"
                            f"{_docker('logs', name).stderr[-3000:]}")
            time.sleep(0.5)

        # Keys come from the Secret's env; the instances are unreachable: TEI-shaped errors, no 500.
        no_key = _docker("exec", name, "python3", "-c", REQUEST, "{}", check=False)
        status, body = no_key.stdout.split(" ", 1)
        assert (status, json.loads(body)["error_type"]) == ("401", "Unauthorized"), no_key
        with_key = _docker("exec", name, "python3", "-c", REQUEST,
                           json.dumps({"Authorization": f"Bearer {keys['FINANCE_API_KEY']}"}), check=False)
        status, body = with_key.stdout.split(" ", 1)
        assert (status, json.loads(body)["error_type"]) == ("503", "Unhealthy"), with_key

        # The preStop hook runs in the image too.
        pre_stop = container_spec["lifecycle"]["preStop"]["exec"]["command"]
        assert _docker("exec", name, *pre_stop, timeout=30, check=False).returncode == 0

        logs = _docker("logs", name)
        assert "listening on http://0.0.0.0:8080" in logs.stdout + logs.stderr
        assert not any(key in logs.stdout + logs.stderr for key in keys.values())
    finally:
        _docker("rm", "-f", name, check=False)


def test_build_script_refuses_an_unknown_target() -> None:
    proc = subprocess.run([str(REPO / "scripts/build-worker-image.sh"), "--target", "gatway"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "unknown --target 'gatway'" in proc.stderr and "worker|gateway" in proc.stderr


@pytest.mark.slow
def test_gateway_rootfs_holds_the_gateway_libraries_and_no_worker(tmp_path: Path) -> None:
    staging = tmp_path / "rootfs"
    subprocess.run([sys.executable, str(REPO / "scripts/worker_rootfs.py"), "--target", "gateway", "layout",
                    str(staging)], check=True, capture_output=True)
    host = set(Path(f"{staging}.host.list").read_bytes().decode().split("\0"))
    generated = set(Path(f"{staging}.staging.list").read_bytes().decode().split("\0"))
    site = Path(__import__("sysconfig").get_paths()["purelib"]).relative_to("/").as_posix()

    for needed in ("uvicorn/__init__.py", "starlette/__init__.py", "orjson", "kubernetes/__init__.py",
                   "redis/__init__.py", "typer/__init__.py", "docker/__init__.py"):
        assert f"{site}/{needed}" in host, needed
    for unwanted in ("torch", "transformers", "fallback_worker", "textual", "pytest", "matplotlib", "tei_manager"):
        assert f"{site}/{unwanted}" not in host, unwanted  # tei_manager/ is a layer of its own
    assert {"usr/local/bin/tei-manager", "usr/local/bin/tei-manager-healthcheck"} <= generated
    assert ":10001:10001:" in (staging / "etc/passwd").read_text()
    assert (staging / "home/tei-manager").stat().st_uid == 10001
