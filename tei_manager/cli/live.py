"""Planning against the live host for commands that change it (apply, watch).

Reads the profile, probes the host, and passes the planner what it needs to keep a re-apply
stable: the host ports held by *other* programs (so `port: auto` skips them but never moves
our own instances) and our own pids (so their VRAM is not counted as someone else's).
"""

from __future__ import annotations

from pathlib import Path

from tei_manager.backends.base import Backend
from tei_manager.core.facts import DockerFact
from tei_manager.core.plan import Plan
from tei_manager.errors import ProfileError

_LISTEN = "0A"


def listening_ports() -> set[int]:
    """TCP ports something listens on, from /proc/net/tcp{,6} (empty where there is no /proc)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def profile_name(profile_or_path: str) -> str:
    """`down`/`status` accept a profile file or a bare profile name."""
    path = Path(profile_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from tei_manager.profiles import load_profile

        return load_profile(path).name
    return profile_or_path


def live_plan(path: str, backend: Backend, docker_url: str | None = None) -> Plan:
    from tei_manager.core.planner import plan as make_plan
    from tei_manager.probe import probe_host
    from tei_manager.profiles import load_profile

    if not Path(path).exists():
        raise ProfileError("no such profile file", where=path, fix="check the path; the examples live in profiles/")
    profile = load_profile(path)
    facts = probe_host(docker_url if backend.name == "docker" else None)
    if backend.name == "process":
        # `runtime: auto` must pick the fallback worker when instances run as local processes.
        facts = facts.model_copy(update={"docker": DockerFact(reachable=False, error="not used: instances run as local processes")})
    ours = backend.list(profile.name)
    own_ports = {o.port for o in ours if o.port is not None}
    own_pids: set[int] = set()
    for obs in ours:
        own_pids |= backend.pids(obs)
    return make_plan(profile, facts, observed_ports=listening_ports() - own_ports, source=path, own_pids=own_pids)
