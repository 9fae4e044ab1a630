"""The runner with a full-grid comparison and a time budget, against a simulated instance.

The instances here are stand-ins: real HTTP servers on loopback (the real load generator talks to
them) whose service time follows a made-up batch model of the settings, so that a grid of several
points runs in seconds and the best point is known. Real workers are in test_tune_trial.py and
test_tune_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tei_manager.tune.local import free_port
from tei_manager.tune.runner import TuneRequest, run_tune
from tei_manager.tune.search import Dimension, Space
from tei_manager.tune.target import Exit, Settings, StartFailed
from tei_manager.tune.trial import Schedule
from tei_manager.tune.workload import synthetic

SPACE = Space((Dimension("max_batch_tokens", (512, 1024, 2048, 4096)), Dimension("forward_workers", (1, 2, 3))),
              {"max_client_batch_size": 4, "dtype": "float32"})
SCHEDULE = Schedule(step_seconds=0.4, warmup_seconds=0.05, max_concurrency=8)


class SimulatedInstance:
    """Serves /embed with ``workers`` requests at a time, each taking longer the smaller the batch budget."""

    def __init__(self, settings: Settings) -> None:
        tokens, workers = int(settings["max_batch_tokens"]), int(settings.get("forward_workers", 1))
        # 2048 tokens and 2 workers is the sweet spot of this made-up instance.
        service_s = 0.004 * (1 + abs(tokens.bit_length() - 12) * 0.5) * (1 + abs(workers - 2) * 0.3)
        gate = asyncio.Semaphore(workers)

        async def embed(request: Request) -> JSONResponse:
            body = await request.json()
            async with gate:
                await asyncio.sleep(service_s)
            return JSONResponse([[0.0]] * len(body["inputs"]))

        self.port = free_port()
        app = Starlette(routes=[Route("/embed", embed, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.peak = tokens * 1000 + workers * 100

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def peak_memory_bytes(self) -> int | None:
        return self.peak

    def exited(self) -> Exit | None:
        return None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class SimulatedTarget:
    device = "simulated"

    def __init__(self) -> None:
        self.started: list[dict[str, int | str]] = []

    def start(self, settings: Settings) -> SimulatedInstance:
        self.started.append(dict(settings))
        if int(settings["max_batch_tokens"]) > 4096:
            raise StartFailed("oom", "warm-up needs more memory than there is")
        return SimulatedInstance(settings)


def _request() -> TuneRequest:
    return TuneRequest("sim", "some/model", "fallback", synthetic("embed", n=32, seed=0), SPACE,
                       {"max_batch_tokens": 8192, "max_client_batch_size": 4, "max_concurrent_requests": 64},
                       "float32", slo_p99_ms=5_000, schedule=SCHEDULE)


def test_search_and_full_grid_in_one_run() -> None:
    target = SimulatedTarget()
    result = run_tune([_request()], lambda r: target, budget_seconds=600, compare_full_grid=True,
                      record_calibration=False)
    (dep,) = result.deployments
    # The current setting (8192 tokens) does not fit: infeasible, shown, and no gain can be computed.
    assert dep.current.infeasible == "oom at start: warm-up needs more memory than there is"
    assert dep.gain is None
    assert dep.grid is not None and len(dep.grid) == SPACE.size
    # Every point ran once (the grid reused what the search had measured), then the confirmation round
    # started the leaders again: the search's and the grid's top three, twice each, in turn.
    assert len(target.started) == 1 + SPACE.size + dep.confirmation_trials
    assert dep.confirmation_trials == 2 * len(dep.confirmations) and 3 <= len(dep.confirmations) <= 4
    again = target.started[1 + SPACE.size:]
    assert again[:len(dep.confirmations)] == again[len(dep.confirmations):]  # alternating: A B C, A B C
    # A third of the grid, counting the confirmations of the search's leaders.
    assert len(dep.search) + dep.search_confirmations <= SPACE.size / 3
    grid_best, chosen = dep.grid_best, dep.search_best
    assert grid_best is not None and chosen is not None
    # Both compared on their confirmed medians, not on single trials.
    assert dep.confirmed(grid_best) is not None and dep.confirmed(chosen) is not None
    assert dep.search_vs_grid is not None and dep.search_vs_grid <= 1
    assert dep.recommended is not None and dep.recommended["max_client_batch_size"] == 4


def test_the_budget_stops_the_search() -> None:
    target = SimulatedTarget()
    began = time.monotonic()
    result = run_tune([_request()], lambda r: target, budget_seconds=3, record_calibration=False)
    (dep,) = result.deployments
    assert dep.search_stopped_early and len(dep.search) < SPACE.size
    slowest = max(t.seconds for t in [dep.current, *dep.search])
    assert time.monotonic() - began <= 3 + slowest + 2


def test_the_budget_keeps_time_for_the_confirmation_round() -> None:
    """The search stops early enough that the current setting and the search's leaders are confirmed
    within the budget."""
    target = SimulatedTarget()
    request = _request()
    request = TuneRequest(request.deployment, request.model, request.runtime, request.workload, SPACE,
                          {"max_batch_tokens": 2048, "max_client_batch_size": 4, "forward_workers": 1},
                          "float32", slo_p99_ms=5_000, schedule=SCHEDULE)
    budget = 20.0
    began = time.monotonic()
    result = run_tune([request], lambda r: target, budget_seconds=budget, record_calibration=False)
    elapsed = time.monotonic() - began
    (dep,) = result.deployments
    assert dep.confirmed(dep.current) is not None
    chosen = dep.chosen
    assert chosen is not None and dep.confirmed(chosen) is not None
    assert dep.gain is not None
    assert elapsed <= budget + 2


def test_budgets_read_like_the_cli_writes_them() -> None:
    from tei_manager.tune.runner import parse_budget

    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("1h30m") == 5400
    assert parse_budget("45") == 45
    for bad in ("ten minutes", "10x", "0m", "5m junk"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)
