"""A fixed background load: N processes that spin on the CPU, each pinned to one core, as an
unrelated busy tenant would be. The same N gives the same load on every run."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager


def _spin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
    while True:
        pass


def _cores() -> list[int | None]:
    """The cores this process may use; [None] where affinity is not available (no pinning)."""
    if hasattr(os, "sched_getaffinity"):
        return [*sorted(os.sched_getaffinity(0))]
    return [None]


@contextmanager
def background_load(processes: int) -> Iterator[list[int | None]]:
    """Run `processes` spinners (one per core, round robin from the last core) while the block runs;
    yields the core each one is pinned to."""
    cores = _cores()
    pinned = [cores[-1 - i % len(cores)] for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")  # no copy of the parent's threads or torch state
    spinners = [ctx.Process(target=_spin, args=(core,), daemon=True) for core in pinned]
    for proc in spinners:
        proc.start()
    try:
        yield pinned
    finally:
        for proc in spinners:
            proc.terminate()
        for proc in spinners:
            proc.join()
