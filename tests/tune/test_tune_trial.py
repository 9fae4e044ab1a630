"""Trials against real fallback-worker processes on loopback: figures, peaks, and infeasible settings.

Only the 5xx storm uses a stand-in server (a real HTTP server on loopback that answers 500): a worker
cannot be made to fail that way on purpose. Timings are never asserted; the SLOs are loose so the
assertions hold on a busy machine.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tei_manager.tune.loadgen import run_step
from tei_manager.tune.local import LocalWorkerTarget, free_port
from tei_manager.tune.target import Exit, Settings
from tei_manager.tune.trial import Schedule, run_confirmation, run_trial
from tei_manager.tune.workload import synthetic

pytestmark = pytest.mark.slow

QUICK = Schedule(step_seconds=0.8, warmup_seconds=0.2, max_concurrency=4, request_timeout=20)
WORKLOAD = synthetic("embed", n=64, languages=("en", "zh"), seed=1)
BASE: Settings = {"max_batch_tokens": 1024, "max_client_batch_size": 4, "max_concurrent_requests": 64,
                  "dtype": "float32", "forward_workers": 1}


def test_a_trial_records_throughput_latency_and_peak_memory(tiny_embedder_dir: Path) -> None:
    result = run_trial(LocalWorkerTarget(tiny_embedder_dir), BASE, WORKLOAD, slo_p99_ms=30_000, schedule=QUICK)
    assert result.feasible and result.meets_slo, result.to_json()
    assert [s.concurrency for s in result.steps][:2] == [1, 2]
    best = result.best
    assert best is not None and best.throughput > 0 and best.requests > 0
    assert best.p50_ms is not None and best.p99_ms is not None and best.p50_ms <= best.p99_ms
    # Resident memory of a torch process holding a model: far more than 50 MiB, far less than 8 GiB.
    assert result.peak_memory_bytes is not None and 50 << 20 < result.peak_memory_bytes < 8 << 30
    assert result.to_json()["throughput_at_slo"] == round(best.throughput, 2)


def test_a_confirmation_holds_the_best_level_longer_and_reads_the_dtype_the_worker_runs_at(
        tiny_embedder_dir: Path) -> None:
    target = LocalWorkerTarget(tiny_embedder_dir)
    unset = {k: v for k, v in BASE.items() if k != "dtype"}
    again = run_confirmation(target, unset, WORKLOAD, concurrency=2, slo_p99_ms=30_000, schedule=QUICK)
    assert again.meets_slo, again.to_json()
    # One step at the level it was asked for, three trial steps long.
    (step,) = again.steps
    assert step.concurrency == 2 and step.requests > 0 and QUICK.confirm_seconds == 3 * QUICK.step_seconds
    assert again.throughput == step.throughput > 0
    # No dtype in the settings: the worker picked its own default, and the trial knows which (from /info).
    assert again.reported.get("dtype") in ("float32", "bfloat16")
    pinned = run_trial(target, BASE, WORKLOAD, slo_p99_ms=30_000,
                       schedule=Schedule(step_seconds=0.5, warmup_seconds=0.1, max_concurrency=1))
    assert pinned.reported == {"dtype": "float32"} and pinned.start_seconds > 0


def test_rerank_trials_send_each_query_with_its_documents(tiny_reranker_dir: Path) -> None:
    workload = synthetic("rerank", n=16, documents_per_query=3, languages=("zh", "en"), seed=2)
    settings: Settings = {"max_batch_tokens": 1024, "max_client_batch_size": 3, "dtype": "float32"}
    result = run_trial(LocalWorkerTarget(tiny_reranker_dir), settings, workload, slo_p99_ms=30_000,
                       schedule=Schedule(step_seconds=0.8, warmup_seconds=0.2, max_concurrency=1))
    assert result.meets_slo, result.to_json()
    assert result.steps[0].errors == 0  # 3 documents fit a client batch of 3: no 413/422


def test_an_impossible_setting_is_infeasible_not_hidden(tiny_embedder_dir: Path) -> None:
    result = run_trial(LocalWorkerTarget(tiny_embedder_dir), {**BASE, "dtype": "float64"}, WORKLOAD,
                       slo_p99_ms=30_000, schedule=QUICK)
    assert not result.feasible and result.throughput == 0
    assert result.infeasible is not None and result.infeasible.startswith("crash at start")
    assert result.to_json()["feasible"] is False


def test_an_instance_killed_mid_trial_is_marked_out_of_memory(tiny_embedder_dir: Path) -> None:
    """SIGKILL is what the kernel's OOM killer (or a container memory limit) sends."""
    target = LocalWorkerTarget(tiny_embedder_dir)
    real_start = target.start

    def start_then_kill(settings: Settings):  # type: ignore[no-untyped-def]
        instance = real_start(settings)
        threading.Timer(1.0, lambda: instance.proc.send_signal(signal.SIGKILL)).start()
        return instance

    target.start = start_then_kill  # type: ignore[method-assign]
    result = run_trial(target, BASE, WORKLOAD, slo_p99_ms=30_000,
                       schedule=Schedule(step_seconds=1.0, warmup_seconds=0.2, max_concurrency=64,
                                         plateau_steps=100))
    assert result.infeasible is not None and result.infeasible.startswith("oom at concurrency"), result.to_json()


def test_a_slo_that_nothing_meets_gives_zero_throughput_but_keeps_the_measurement(tiny_embedder_dir: Path) -> None:
    result = run_trial(LocalWorkerTarget(tiny_embedder_dir), BASE, WORKLOAD, slo_p99_ms=0.001, schedule=QUICK)
    assert result.feasible and not result.meets_slo and result.throughput == 0
    assert len(result.steps) == 1 and result.steps[0].p99_ms is not None  # stopped at the first break


class _FailingInstance:
    """A real loopback HTTP server answering every request with 500 (the stand-in for a sick instance)."""

    def __init__(self) -> None:
        async def fail(request: Request) -> JSONResponse:
            await request.body()
            return JSONResponse({"error": "boom", "error_type": "backend"}, status_code=500)

        app = Starlette(routes=[Route("/embed", fail, methods=["POST"])])
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def peak_memory_bytes(self) -> int | None:
        return None

    def exited(self) -> Exit | None:
        return None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class _FailingTarget:
    device = "cpu"

    def start(self, settings: Settings) -> _FailingInstance:
        return _FailingInstance()


def test_a_5xx_storm_marks_the_setting_infeasible() -> None:
    result = run_trial(_FailingTarget(), BASE, WORKLOAD, slo_p99_ms=30_000, schedule=QUICK)
    assert result.infeasible is not None and "server errors" in result.infeasible
    assert result.steps[0].server_errors > 0


@pytest.fixture
def closed_port() -> Iterator[int]:
    yield free_port()  # nothing listens there


def test_the_load_generator_counts_refused_connections_and_ends_on_time(closed_port: int) -> None:
    began = time.monotonic()
    step = asyncio.run(run_step(f"http://127.0.0.1:{closed_port}", "/embed", lambda i: (b"{}", 1),
                                concurrency=2, seconds=0.5, warmup=0.1))
    assert step.transport_errors > 0 and step.requests == 0 and step.throughput == 0
    assert time.monotonic() - began < 10
