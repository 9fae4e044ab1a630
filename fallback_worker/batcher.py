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


# What one extra forward pass costs, in padded tokens: the per-call work (Python module calls,
# kernel launches, small matmuls that use the cores badly). Measured on all-MiniLM-L6-v2 on CPU,
# where batch 8 vs 16 of equal lengths differs by about this much; it only has to be the right
# order of magnitude for the split below to beat both "fill every batch" and "equal-length batches".
BATCH_OVERHEAD_TOKENS = 128


def plan_batches(jobs: Sequence[Job], max_batch_tokens: int, max_batch_requests: int | None) -> list[list[Job]]:
    """Sort by (task, length) and split into padded batches at the least total cost.

    Cost of a batch = count x longest (padded tokens) + BATCH_OVERHEAD_TOKENS. Filling each batch
    greedily pads short inputs up to the long ones that happen to follow them; a dynamic program
    over the sorted lengths finds the cheapest cut points instead, within --max-batch-tokens
    (count x longest) and --max-batch-requests. O(n x cap) for a window of n inputs.
    """
    ordered = sorted(jobs, key=lambda j: (j.task, j.length))
    batches: list[list[Job]] = []
    start = 0
    while start < len(ordered):  # one task at a time: batches never mix tasks
        end = start
        while end < len(ordered) and ordered[end].task == ordered[start].task:
            end += 1
        batches.extend(_cheapest_split(ordered[start:end], max_batch_tokens, max_batch_requests))
        start = end
    return batches


def _cheapest_split(ordered: list[Job], max_batch_tokens: int, max_batch_requests: int | None) -> list[list[Job]]:
    n = len(ordered)
    cap = n if max_batch_requests is None else max(1, max_batch_requests)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j inputs
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = ordered[j - 1].length
        for i in range(j - 1, max(0, j - cap) - 1, -1):
            count = j - i
            if count > 1 and count * longest > max_batch_tokens:
                break  # longer batches ending at j only get bigger
            cost = best[i] + count * longest + BATCH_OVERHEAD_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches: list[list[Job]] = []
    j = n
    while j > 0:
        batches.append(ordered[cut[j] : j])
        j = cut[j]
    batches.reverse()
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
