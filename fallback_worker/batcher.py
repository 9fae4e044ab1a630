"""Admission permits, one queue, and length-sorted dynamic batches run on a dedicated forward thread.

Flow: a handler takes one permit per input (TEI 1.9: none free means 429 at once), tokenizes in a
thread pool, then submits one Job per input. The forward thread takes a window from the head of
the queue (FIFO), sorts it by length (so each padded batch wastes little), cuts it into batches
within --max-batch-tokens (padded: longest x count) and --max-batch-requests, and runs them in
order. Windows keep it fair: an input waits for the windows ahead of it, never behind newcomers.
The window is a few batches long when batches are capped: long enough for sorting to pay, short
enough that a request's inputs (which arrive together) finish together instead of being spread
over one huge sorted pass. Jobs whose client went away are dropped before their batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import Engine
from .metrics import Metrics
from .tokenization import Encoded

log = logging.getLogger("fallback_worker.batcher")


WINDOW_BATCHES = 8


class Permits:
    """TEI's admission semaphore, counted per input; only touched from the event loop."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total

    def try_acquire(self, n: int) -> bool:
        if n > self.free:
            return False
        self.free -= n
        return True

    def release(self, n: int) -> None:
        self.free = min(self.total, self.free + n)


@dataclass(eq=False)
class Job:
    task: str
    encoded: Encoded
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    inference_s: float = 0.0
    cancelled: bool = False

    @property
    def length(self) -> int:
        return len(self.encoded.ids)


def plan_batches(jobs: Sequence[Job], max_batch_tokens: int, max_batch_requests: int | None) -> list[list[Job]]:
    """Sort by (task, length) and cut into padded batches: longest x count <= max_batch_tokens."""
    ordered = sorted(jobs, key=lambda j: (j.task, j.length))
    batches: list[list[Job]] = []
    current: list[Job] = []
    for job in ordered:
        if current:
            longest = max(current[-1].length, job.length)  # sorted, so the newest is the longest
            full = (
                job.task != current[0].task
                or longest * (len(current) + 1) > max_batch_tokens
                or (max_batch_requests is not None and len(current) >= max_batch_requests)
            )
            if full:
                batches.append(current)
                current = []
        current.append(job)
    if current:
        batches.append(current)
    return batches


class Batcher:
    """Owns the queue and the forward thread. ``submit`` is called on the event loop."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_batch_tokens: int,
        max_batch_requests: int | None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.healthy = True
        self._on_failure = on_failure
        self._queue: list[Job] = []
        self._cond = threading.Condition()
        self._model_lock = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.forward_passes = 0
        # Inputs per sorted window; None (no batch cap, e.g. on GPU) sorts everything queued.
        self.window = None if max_batch_requests is None else WINDOW_BATCHES * max_batch_requests

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="forward", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the forward thread (graceful shutdown)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def submit(self, task: str, encoded: Sequence[Encoded]) -> list[Job]:
        assert self._loop is not None, "Batcher.start() was not called"
        jobs = [Job(task, e, self._loop.create_future()) for e in encoded]
        with self._cond:
            self._queue.extend(jobs)
            self.metrics.queue_size.set(len(self._queue))
            self._cond.notify()
        return jobs

    def health_check(self) -> bool:
        """Cheap while the last batch succeeded; after a failure, a real one-token forward pass."""
        if self.healthy:
            return True
        try:
            with self._model_lock:  # never concurrently with a batch on the forward thread
                self.engine.health()
            self.healthy = True
        except Exception:
            log.exception("health forward pass failed")
        return self.healthy

    # ---- forward thread ------------------------------------------------------------------
    def _run(self) -> None:
        self.engine.use_threads()
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue and self._stop:
                    return
                take = len(self._queue) if self.window is None else self.window
                snapshot, self._queue = self._queue[:take], self._queue[take:]
            for batch in plan_batches(snapshot, self.max_batch_tokens, self.max_batch_requests):
                self._run_batch(batch)
            with self._cond:
                self.metrics.queue_size.set(len(self._queue))

    def _run_batch(self, batch: list[Job]) -> None:
        live = [j for j in batch if not j.cancelled and not j.future.cancelled()]
        dropped = len(batch) - len(live)
        if dropped:
            self.metrics.failure("dropped", dropped)
        if not live:
            return
        longest = max(j.length for j in live)
        self.metrics.batch_next_size.observe(len(live))
        self.metrics.batch_next_tokens.observe(longest * len(live))
        start = time.perf_counter()
        for job in live:
            job.started = start
        try:
            with self._model_lock:
                results = self.engine.run(live[0].task, [j.encoded for j in live])
            self.forward_passes += 1
            error: BaseException | None = None
        except Exception as exc:
            log.exception("forward pass failed")
            self.healthy = False
            error, results = exc, []
            if self._on_failure:
                self._on_failure(exc)
        elapsed = time.perf_counter() - start
        for job in live:
            job.inference_s = elapsed
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, live, results, error)


def _resolve(jobs: list[Job], results: Sequence[Any], error: BaseException | None) -> None:
    for i, job in enumerate(jobs):
        if job.future.done():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(results[i])
