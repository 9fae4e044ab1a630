"""Admission permits, one queue, and length-sorted dynamic batches run on dedicated forward threads.

Flow: a handler takes one permit per input (TEI 1.9: none free means 429 at once), tokenizes in a
thread pool, then submits one Job per input. A forward thread takes a window from the head of
the queue (FIFO), sorts it by length (so each padded batch wastes little), cuts it into batches
within --max-batch-tokens (padded: longest x count) and --max-batch-requests, and runs them in
order. Windows keep it fair: an input waits for the windows ahead of it, never behind newcomers.
The window is a few batches long when batches are capped: long enough for sorting to pay, short
enough that a request's inputs (which arrive together) finish together instead of being spread
over one huge sorted pass. Jobs whose client went away are dropped before their batch runs.

On CPU two forward threads share the cores (see ``forward_workers``): each takes the next planned
batch of the current window, and plans the next window when none is left, so the order of windows
stays FIFO while two batches run at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import BaseEngine, BatchResult
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


# On the unpadded path, what one padded slot costs relative to a real token: attention and its
# gathers still run on [count, longest]; per slot that is about longest / (6 x hidden) of a
# layer's work (4·L·H attention FLOPs against 24·H² for the projections and the feed-forward),
# 1/40 to 1/10 for the models and lengths served here.
ATTENTION_SHARE = 1 / 16


def plan_batches(
    jobs: Sequence[Job],
    max_batch_tokens: int,
    max_batch_requests: int | None,
    *,
    padded: bool = True,
    overhead_tokens: int = BaseEngine.batch_overhead_tokens,
) -> list[list[Job]]:
    """Sort by (task, length) and split into batches at the least total cost.

    A padded batch costs count x longest tokens + the engine's ``overhead_tokens`` (what one more
    forward pass costs, BaseEngine.batch_overhead_tokens). Filling each batch
    greedily pads short inputs up to the long ones that happen to follow them; a dynamic program
    over the sorted lengths finds the cheapest cut points instead, within --max-batch-tokens and
    --max-batch-requests. O(n x cap) for a window of n inputs.

    An unpadded batch (packed.py) costs its real tokens, plus ATTENTION_SHARE of the padded
    layout that attention still uses, plus the overhead; so short and long inputs may share a
    batch. The budget bounds count x longest in both cases: that padded layout is what attention
    holds in memory, and what the VRAM model sizes.
    """
    ordered = sorted(jobs, key=lambda j: (j.task, j.length))
    batches: list[list[Job]] = []
    start = 0
    while start < len(ordered):  # one task at a time: batches never mix tasks
        end = start
        while end < len(ordered) and ordered[end].task == ordered[start].task:
            end += 1
        batches.extend(
            _cheapest_split(ordered[start:end], max_batch_tokens, max_batch_requests, padded, overhead_tokens)
        )
        start = end
    return batches


def _cheapest_split(
    ordered: list[Job], max_batch_tokens: int, max_batch_requests: int | None, padded: bool, overhead_tokens: int
) -> list[list[Job]]:
    n = len(ordered)
    cap = n if max_batch_requests is None else max(1, max_batch_requests)
    prefix = [0]  # prefix[j]: tokens of the first j inputs
    for job in ordered:
        prefix.append(prefix[-1] + job.length)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j inputs
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = ordered[j - 1].length
        for i in range(j - 1, max(0, j - cap) - 1, -1):
            count = j - i
            layout = count * longest
            if count > 1 and layout > max_batch_tokens:
                break  # longer batches ending at j only get bigger
            tokens = layout if padded else prefix[j] - prefix[i] + layout * ATTENTION_SHARE
            cost = best[i] + tokens + overhead_tokens
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
    """Owns the queue and the forward threads. ``submit`` is called on the event loop."""

    def __init__(
        self,
        engine: BaseEngine,
        metrics: Metrics,
        *,
        max_batch_tokens: int,
        max_batch_requests: int | None,
        on_failure: Callable[[BaseException], None] | None = None,
        forward_workers: int = 1,
    ) -> None:
        self.engine = engine
        self.padded = not engine.spec.unpadded
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.healthy = True
        self._on_failure = on_failure
        self._queue: list[Job] = []
        self._planned: deque[list[Job]] = deque()  # batches of the current window not yet started
        self._running = 0  # batches in a forward pass now
        self._lock = threading.Lock()
        # Parked forward threads, the most recently parked last. New work is left to a thread
        # between two batches, else wakes the last parked one (_wake): with little traffic one
        # thread then serves every batch. Waking the longest-parked one (a shared
        # Condition's order) alternates lone requests between the threads, and OpenVINO ran one
        # input up to 23% slower when each call came from the other thread than the last.
        self._parked: list[threading.Condition] = []
        self._stop = False
        self.forward_workers = max(1, forward_workers)
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Inputs per sorted window; None (no batch cap, e.g. on GPU) sorts everything queued.
        self.window = None if max_batch_requests is None else WINDOW_BATCHES * max_batch_requests

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stop = False
        self._threads = [
            threading.Thread(target=self._run, name=f"forward-{i}", daemon=True) for i in range(self.forward_workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the forward threads (graceful shutdown)."""
        with self._lock:
            self._stop = True
            for parked in self._parked:
                parked.notify()
        for thread in self._threads:
            thread.join(timeout=60)

    def submit(self, task: str, encoded: Sequence[Encoded]) -> list[Job]:
        assert self._loop is not None, "Batcher.start() was not called"
        jobs = [Job(task, e, self._loop.create_future()) for e in encoded]
        with self._lock:
            self._queue.extend(jobs)
            self.metrics.queue_size.set(len(self._queue))
            self._wake()
        return jobs

    def health_check(self) -> bool:
        """Cheap while the last batch succeeded; after a failure, a real one-token forward pass.

        It may overlap a batch: forward passes share no mutable state (eval mode, inference_mode), and
        the forward threads already run two at once on CPU.
        """
        if self.healthy:
            return True
        try:
            self.engine.health()
            self.healthy = True
        except Exception:
            log.exception("health forward pass failed")
        return self.healthy

    # ---- forward threads -----------------------------------------------------------------
    def _wake(self) -> None:
        """Make sure a forward thread looks at the work (the lock is held): a thread between two
        batches will by itself; else wake the most recently parked one."""
        looking = self.forward_workers - self._running - len(self._parked)
        if looking <= 0 and self._parked:
            self._parked.pop().notify()

    def _run(self) -> None:
        wake = threading.Condition(self._lock)
        while (taken := self._next_batch(wake)) is not None:
            batch, share = taken
            self.engine.use_threads(share)
            outcome = None
            try:
                outcome = self._run_batch(batch)
            finally:
                with self._lock:
                    # No longer running before its clients hear back: their next requests then
                    # find this thread looking for work instead of waking the other one.
                    self._running -= 1
            if outcome is not None:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(_resolve, *outcome)

    def _next_batch(self, wake: threading.Condition) -> tuple[list[Job], int] | None:
        """The next planned batch and how many forward passes share the torch threads while it runs;
        plans the next window from the queue when none is left. None: stopped."""
        with self._lock:
            while not self._planned and not self._queue and not self._stop:
                self._parked.append(wake)
                wake.wait()
                if wake in self._parked:  # woken by stop(), not popped by _wake
                    self._parked.remove(wake)
            if not self._planned:
                if not self._queue:
                    return None  # stopping, and everything queued has run
                take = len(self._queue) if self.window is None else self.window
                snapshot, self._queue = self._queue[:take], self._queue[take:]
                self._planned.extend(
                    plan_batches(snapshot, self.max_batch_tokens, self.max_batch_requests, padded=self.padded,
                                 overhead_tokens=self.engine.batch_overhead_tokens)
                )
                self.metrics.queue_size.set(len(self._queue))
            batch = self._planned.popleft()
            self._running += 1
            if self._planned:
                self._wake()  # another forward thread can take the next batch
            # A batch that runs alone (nothing else running or waiting: one client, or a quiet
            # moment) gets all of the torch threads, so one client's 16-input request is not
            # served at half the CPU; when more work is there, the passes split the threads. A
            # pass already running keeps its threads until it ends, so the CPU is briefly
            # oversubscribed, never idle. A small batch keeps its share either way: its matmuls
            # are too small to split (one MiniLM input: 8 ms on one thread, 14 ms on two).
            waiting = 1 if (self._planned or self._queue) else 0
            if sum(j.length for j in batch) < self.engine.split_min_tokens:
                return batch, self.forward_workers
            return batch, min(self.forward_workers, self._running + waiting)

    def _run_batch(self, batch: list[Job]) -> tuple[list[Job], BatchResult, BaseException | None] | None:
        """One forward pass; returns what to resolve the jobs' futures with (None: all were dropped)."""
        live = [j for j in batch if not j.cancelled and not j.future.cancelled()]
        dropped = len(batch) - len(live)
        if dropped:
            self.metrics.failure("dropped", dropped)
        if not live:
            return None
        longest = max(j.length for j in live)
        self.metrics.batch_next_size.observe(len(live))
        self.metrics.batch_next_tokens.observe(longest * len(live))
        start = time.perf_counter()
        for job in live:
            job.started = start
        try:
            results = self.engine.run(live[0].task, [j.encoded for j in live])
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
        return live, results, error


def _resolve(jobs: list[Job], results: BatchResult, error: BaseException | None) -> None:
    for i, job in enumerate(jobs):
        if job.future.done():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(results[i])
