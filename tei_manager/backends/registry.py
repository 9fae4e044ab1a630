"""Backends by name.  Adding one is a module that defines an `ENTRY` (a `base.BackendEntry`) and
one line in `_ENTRIES`.

An entry declares what the planner and the CLI need to know without opening the engine:

* `capabilities(facts)`: what it can host on a host described by `HostFacts` (images or local
  executables, GPUs, whether it allocates host ports, whether replicas are one object);
* `options`: its own CLI options (only the Docker backend has `--docker-url`);
* `open(options)`: the backend itself (raises HostError when the engine does not answer).

`--backend auto` is decided here: the backend that already runs the profile, else the first
one, in `_ENTRIES` order, whose capabilities are not blocked on this host.
"""

from __future__ import annotations

from tei_manager.backends import docker, kubernetes, process
from tei_manager.backends.base import Backend, BackendEntry, BackendOption, Options
from tei_manager.core.capabilities import Capabilities
from tei_manager.core.facts import HostFacts
from tei_manager.errors import HostError

_ENTRIES: dict[str, BackendEntry] = {e.name: e for e in (docker.ENTRY, process.ENTRY, kubernetes.ENTRY)}


def register_backend(entry: BackendEntry) -> None:
    _ENTRIES[entry.name] = entry


def unregister_backend(name: str) -> None:
    _ENTRIES.pop(name, None)


def backend_names() -> tuple[str, ...]:
    return tuple(_ENTRIES)


def auto_backend_names() -> tuple[str, ...]:
    """The backends `--backend auto` tries, in order (a cluster is never chosen implicitly)."""
    return tuple(name for name, entry in _ENTRIES.items() if entry.auto)


def entries() -> tuple[BackendEntry, ...]:
    return tuple(_ENTRIES.values())


def get_entry(name: str) -> BackendEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise HostError(f"unknown backend {name!r}", where="--backend",
                        fix=f"choose auto, {', '.join(_ENTRIES)}") from None


def all_options() -> tuple[BackendOption, ...]:
    """Every backend's options, once each (the CLI adds them to its commands)."""
    seen: dict[str, BackendOption] = {}
    for entry in _ENTRIES.values():
        for option in entry.options:
            seen.setdefault(option.name, option)
    return tuple(seen.values())


def probe_address(options: Options) -> str | None:
    """The engine address the host probe should ask (the first backend that names one)."""
    for entry in _ENTRIES.values():
        if entry.probe_option and options.get(entry.probe_option):
            return str(options[entry.probe_option])
    return None


def try_open(entry: BackendEntry, options: Options) -> tuple[Backend | None, str | None]:
    """The backend, or None and why it is unavailable."""
    try:
        return entry.open(options), None
    except HostError as exc:
        return None, exc.what
    except ImportError as exc:  # an engine SDK is a dependency, but be clear if it is missing
        return None, f"a Python package the {entry.name} backend needs is missing ({exc})"


def auto_capabilities(chosen: BackendEntry, facts: HostFacts) -> Capabilities:
    """The chosen backend's capabilities, plus why `auto` passed over the ones before it."""
    caps = chosen.capabilities(facts)
    before = list(_ENTRIES.values())[: list(_ENTRIES.values()).index(chosen)] if chosen in _ENTRIES.values() else []
    reasons = [r for r in (e.capabilities(facts).blocked for e in before) if r]
    if not reasons:
        return caps
    return caps.model_copy(update={
        "other_artifact": reasons[0],
        "warnings": (*caps.warnings, f"{reasons[0]}: `runtime: auto` deployments use the fallback worker"),
    })
