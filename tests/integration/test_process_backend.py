"""The process backend: the quickstart profile as local `tei-fallback-worker` processes.

Runs the real CLI in-process (`tei_manager.cli.app.main`) against a copy of
profiles/quickstart.yaml that differs only in its name and ports, so it cannot collide with
anything else on the host.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from it_support import free_port, write_profile

from tei_manager.backends.process import ProcessBackend
from tei_manager.cli.app import main
from tei_manager.instance_keys import SECRET_FILE, bearer, instance_key
from tei_manager.state import state_dir, state_root

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def quickstart_copy(directory: Path, name: str) -> tuple[Path, dict[str, int]]:
    data = yaml.safe_load((REPO / "profiles" / "quickstart.yaml").read_text())
    data["name"] = name
    ports = {}
    for dep in data["deployments"]:
        dep["port"] = ports[dep["name"]] = free_port()
    data["gateway"]["port"] = free_port()
    return write_profile(directory, data), ports


def status_rows(capsys: Any, name: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["status", name, "--backend", "process", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_quickstart_comes_up_answers_and_goes_down(profile_name: str, tmp_path: Path, capsys: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path, ports = quickstart_copy(tmp_path, profile_name)
    monkeypatch.setenv("OPERATOR_ONLY_SECRET", "never-in-a-worker")

    assert main(["apply", str(path), "--backend", "process", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert f"applied {profile_name}" in out and "demo-embed" in out and "demo-rerank" in out

    # Instances answer only who holds their internal key (the gateway): not any local process.
    embed_url = f"http://127.0.0.1:{ports['demo-embed']}/embed"
    assert httpx.post(embed_url, json={"inputs": "hello world"}, timeout=60).status_code == 401
    embed = httpx.post(embed_url, json={"inputs": "hello world"}, headers=bearer(profile_name, "demo-embed"),
                       timeout=60)
    assert embed.status_code == 200 and len(embed.json()[0]) == 384
    rerank = httpx.post(f"http://127.0.0.1:{ports['demo-rerank']}/rerank", headers=bearer(profile_name, "demo-rerank"),
                        json={"query": "greeting", "texts": ["hello there", "tax law"]}, timeout=60)
    assert rerank.status_code == 200 and rerank.json()[0]["index"] == 0
    key = instance_key(profile_name, "demo-embed")
    for record in (state_dir(profile_name) / "instances").glob("*.json"):
        assert key not in record.read_text() and "API_KEY" not in record.read_text()

    rows = {r["instance"]: r for r in status_rows(capsys, profile_name)}
    assert set(rows) == {"demo-embed", "demo-rerank"}
    for row in rows.values():
        assert (row["backend"], row["state"], row["health"], row["restarts"]) == ("process", "running", "healthy", 0)
        assert row["bind"] == "127.0.0.1" and row["device"] == "cpu"
    pids = [r["pid"] for r in rows.values()]
    assert all(pid and Path(f"/proc/{pid}").exists() for pid in pids)
    environ = Path(f"/proc/{rows['demo-embed']['pid']}/environ").read_bytes().split(b"\0")
    assert f"API_KEY={key}".encode() in environ  # TEI's own way, readable by its user and root only
    assert not [v for v in environ if v.startswith(b"OPERATOR_ONLY_SECRET=")]
    # Each worker leads its own session, so it outlives the CLI that started it.
    assert all(os.getsid(pid) == pid for pid in pids)
    for obs in ProcessBackend().list(profile_name):
        assert obs.pid in ProcessBackend().pids(obs)

    started = time.monotonic()
    assert main(["apply", str(path), "--backend", "process"]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert time.monotonic() - started < 5
    assert [r["pid"] for r in status_rows(capsys, profile_name)] == pids

    # A tuning change replaces only that worker (stop, start the new one, gate, then delete the old).
    data = yaml.safe_load(path.read_text())
    data["deployments"][1]["tuning"]["max_client_batch_size"] = 8
    path.write_text(yaml.safe_dump(data))
    assert main(["apply", str(path), "--backend", "process", "--timeout", "120"]) == 0
    after = {r["instance"]: r["pid"] for r in status_rows(capsys, profile_name)}
    assert after["demo-embed"] == rows["demo-embed"]["pid"] and after["demo-rerank"] != rows["demo-rerank"]["pid"]
    info = httpx.get(f"http://127.0.0.1:{ports['demo-rerank']}/info", headers=bearer(profile_name, "demo-rerank"),
                     timeout=10).json()
    assert info["max_client_batch_size"] == 8
    assert sorted(p.name for p in (state_dir(profile_name) / "instances").glob("*.json")) == \
        ["demo-embed.json", "demo-rerank.json"]
    pids = list(after.values())

    # A new secret rotates every key: the next apply replaces the instances, health-gated.
    old_key = instance_key(profile_name, "demo-embed")
    (state_root() / SECRET_FILE).unlink()
    assert main(["apply", str(path), "--backend", "process", "--timeout", "120"]) == 0
    rotated = {r["instance"]: r["pid"] for r in status_rows(capsys, profile_name)}
    assert not set(rotated.values()) & set(pids)
    assert instance_key(profile_name, "demo-embed") != old_key
    body = {"inputs": "hello"}
    assert httpx.post(embed_url, json=body, headers={"authorization": f"Bearer {old_key}"}, timeout=60).status_code == 401
    assert httpx.post(embed_url, json=body, headers=bearer(profile_name, "demo-embed"), timeout=60).status_code == 200
    pids = list(rotated.values())

    assert main(["down", str(path), "--backend", "process"]) == 0
    assert "removed 2 instance(s)" in capsys.readouterr().out
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert status_rows(capsys, profile_name) == []
    assert list((state_dir(profile_name) / "instances").glob("*.json")) == []


def test_plan_shows_what_apply_does_when_a_port_is_taken(profile_name: str, tmp_path: Path, capsys: Any) -> None:
    """`plan --backend process --json` and `apply --backend process` agree on runtimes and ports,
    even with `runtime: auto` (the process backend hosts only the fallback worker) and an `auto`
    port that another program holds."""
    import socket

    path, _ = quickstart_copy(tmp_path, profile_name)
    data = yaml.safe_load(path.read_text())
    for dep in data["deployments"]:
        dep["port"] = "auto"
    data["deployments"][0]["runtime"] = "auto"
    path.write_text(yaml.safe_dump(data))

    def planned() -> dict[str, tuple[str, int]]:
        capsys.readouterr()
        assert main(["plan", str(path), "--backend", "process", "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        return {i["name"]: (i["runtime"], i["host_port"]) for i in plan["instances"]}

    first_port = planned()["demo-embed"][1]
    with socket.socket() as taken:  # another program takes the port `auto` would have used
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", first_port))
        taken.listen()
        shown = planned()
        assert shown["demo-embed"] == ("fallback", shown["demo-embed"][1])
        assert first_port not in {port for _, port in shown.values()}
        try:
            assert main(["apply", str(path), "--backend", "process", "--timeout", "120"]) == 0
            rows = status_rows(capsys, profile_name)
            assert {r["instance"]: (r["runtime"], r["port"]) for r in rows} == shown
        finally:
            main(["down", str(path), "--backend", "process"])


def test_tei_runtime_without_docker_is_a_clear_error(profile_name: str, tmp_path: Path, capsys: Any) -> None:
    path, _ = quickstart_copy(tmp_path, profile_name)
    data = yaml.safe_load(path.read_text())
    data["deployments"][0]["runtime"] = "tei"
    data["deployments"][1]["rerank_mode"] = None
    data["deployments"][1]["runtime"] = "auto"
    path.write_text(yaml.safe_dump(data))
    code = main(["apply", str(path), "--backend", "process"])
    err = capsys.readouterr().err
    assert code != 0
    assert "demo-embed" in err and "docker" in err.lower()
    assert ProcessBackend().list(profile_name) == []


def test_a_reused_pid_is_not_mistaken_for_the_worker(profile_name: str, tmp_path: Path) -> None:
    from it_support import plan_profile

    path, _ = quickstart_copy(tmp_path, profile_name)
    backend = ProcessBackend()
    inst = plan_profile(path).instance("demo-embed")
    created = backend.create(inst)
    record_path = Path(created.handle)
    record = json.loads(record_path.read_text())
    # Our own pid is alive but is not a worker: the instance must read as exited, not running.
    record.update(pid=os.getpid(), proc_start=Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
    record_path.write_text(json.dumps(record))
    assert backend.refresh(created).state == "exited"
    record.update(proc_start="1")  # same pid, another start time: a recycled pid
    record_path.write_text(json.dumps(record))
    assert backend.refresh(created).state == "exited"
    backend.remove(backend.refresh(created))


def test_an_instance_that_refuses_its_key_fails_the_health_gate(profile_name: str, tmp_path: Path,
                                                                capsys: Any) -> None:
    """A key of the deployment's own overrides the internal one: /info answers 401, apply says so
    and rolls back instead of reporting a healthy instance nobody can call."""
    path, _ = quickstart_copy(tmp_path, profile_name)
    data = yaml.safe_load(path.read_text())
    data["deployments"] = data["deployments"][:1]
    data["deployments"][0]["tuning"]["extra_args"] = ["--api-key", "someone-elses-key"]
    path.write_text(yaml.safe_dump(data))
    code = main(["apply", str(path), "--backend", "process", "--timeout", "120"])
    err = capsys.readouterr().err
    assert code != 0
    assert "/info answered 401" in err and "demo-embed" in err
    assert "someone-elses-key" not in err
    assert ProcessBackend().list(profile_name) == []
