"""Runtimes by name.  Adding one is a module with a `RUNTIME` object and one line in `_BUILTIN`.

Order matters: `runtime: auto` takes the first runtime, in this order, that can run an
instance; the last one is the last resort.  Pure: no I/O.
"""

from __future__ import annotations

from tei_manager.runtimes import fallback, tei
from tei_manager.runtimes.base import Runtime

_BUILTIN: tuple[Runtime, ...] = (tei.RUNTIME, fallback.RUNTIME)
_RUNTIMES: dict[str, Runtime] = {r.name: r for r in _BUILTIN}


def register_runtime(runtime: Runtime, *, before: str | None = None) -> None:
    """Add (or replace) a runtime; `before` puts it ahead of another in `auto`'s preference order."""
    global _RUNTIMES
    items = [(n, r) for n, r in _RUNTIMES.items() if n != runtime.name]
    index = next((i for i, (n, _) in enumerate(items) if n == before), len(items))
    items.insert(index, (runtime.name, runtime))
    _RUNTIMES = dict(items)


def unregister_runtime(name: str) -> None:
    _RUNTIMES.pop(name, None)


def runtime_names() -> tuple[str, ...]:
    return tuple(_RUNTIMES)


def runtimes() -> tuple[Runtime, ...]:
    """Every runtime in `auto`'s preference order."""
    return tuple(_RUNTIMES.values())


def get_runtime(name: str) -> Runtime:
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise KeyError(f"unknown runtime {name!r}; known: {', '.join(_RUNTIMES)}") from None
