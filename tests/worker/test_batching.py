"""Batch planning: sorted by length, within the padded token budget and the request cap."""

from __future__ import annotations

import asyncio

from fallback_worker.batcher import Job, plan_batches
from fallback_worker.tokenization import Encoded


def _jobs(lengths: list[int], task: str = "embed") -> list[Job]:
    loop = asyncio.new_event_loop()
    try:
        return [Job(task, Encoded([1] * n, [0] * n, n), loop.create_future()) for n in lengths]
    finally:
        loop.close()


def _serve_one_request(engine: object, lengths: list[int], **settings: int) -> None:
    """A batcher over ``engine`` serves one request of inputs of these lengths, start to finish."""
    from fallback_worker.batcher import Batcher
    from fallback_worker.metrics import Metrics

    async def scenario() -> None:
        batcher = Batcher(engine, Metrics(64), max_batch_tokens=16384, **settings)  # type: ignore[arg-type]
        batcher.start(asyncio.get_running_loop())
        try:
            jobs = batcher.submit("embed", [Encoded([5] * n, [0] * n, n) for n in lengths])
            await asyncio.gather(*(j.future for j in jobs))
        finally:
            batcher.stop()

    asyncio.run(scenario())


def test_batches_are_length_sorted_and_within_the_padded_budget() -> None:
    lengths = [50, 3, 40, 4, 5, 60, 2, 45]
    batches = plan_batches(_jobs(lengths), max_batch_tokens=100, max_batch_requests=None)
    flat = [j.length for b in batches for j in b]
    assert flat == sorted(lengths)
    assert all(max(j.length for j in b) * len(b) <= 100 for b in batches)
    assert [j.length for j in batches[0]] == [2, 3, 4, 5]  # short inputs travel together
    # FIFO order would pad 3 up to 50 in the first batch; sorted, the padding is small.
    padded = sum(max(j.length for j in b) * len(b) for b in batches)
    assert padded - sum(lengths) < 40


def test_a_few_long_inputs_do_not_pad_the_short_ones() -> None:
    # One client request of 16: twelve short sentences and four long ones. Filling a batch of 16
    # would pad all twelve short ones to 120 tokens (1920 padded tokens); split, far fewer.
    lengths = [5] * 12 + [120] * 4
    batches = plan_batches(_jobs(lengths), max_batch_tokens=16384, max_batch_requests=16)
    assert [[j.length for j in b] for b in batches] == [[5] * 12, [120] * 4]


def test_equal_lengths_fill_batches_up_to_the_cap() -> None:
    batches = plan_batches(_jobs([20] * 40), max_batch_tokens=16384, max_batch_requests=16)
    assert sorted(len(b) for b in batches) == [8, 16, 16]


def test_request_cap_and_tasks_do_not_mix() -> None:
    jobs = _jobs([5] * 5) + _jobs([5] * 2, task="classify")
    batches = plan_batches(jobs, max_batch_tokens=10_000, max_batch_requests=2)
    assert all(len(b) <= 2 for b in batches)
    assert all(len({j.task for j in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 7


def test_a_cheaper_forward_pass_splits_a_request_into_tighter_batches(embedder_engine) -> None:
    """The batcher weighs padding against the engine's cost of one more forward pass: with torch's,
    one client's 16 inputs run as one batch padded to 30 tokens; with OpenVINO's cheaper call, as
    two batches of equal lengths (less padding, and on CPU two passes run at once)."""
    from dataclasses import replace

    from fallback_worker.openvino_engine import OpenVinoEngine

    lengths = [20] * 8 + [30] * 8
    assert len(plan_batches(_jobs(lengths), 16384, 16, overhead_tokens=embedder_engine.batch_overhead_tokens)) == 1

    batches: list[list[int]] = []

    class CheapCalls:
        # The real engine, with OpenVINO's per-call cost and padded batches; records each batch's
        # input lengths.
        batch_overhead_tokens = OpenVinoEngine.batch_overhead_tokens
        spec = replace(embedder_engine.spec, unpadded=False)

        def __getattr__(self, name: str):
            return getattr(embedder_engine, name)

        def run(self, task, batch):
            batches.append([len(e.ids) for e in batch])
            return embedder_engine.run(task, batch)

    _serve_one_request(CheapCalls(), lengths, max_batch_requests=16)
    assert sorted(batches) == [[20] * 8, [30] * 8]


def test_one_client_at_a_time_is_served_by_one_forward_thread(embedder_engine) -> None:
    """With two forward threads and one request at a time, every batch after the first runs on the
    same thread: the one that just finished is asked first, rather than the one parked longest
    (OpenVINO ran one input up to 23% slower when each call came from the other thread)."""
    import threading

    from fallback_worker.batcher import Batcher
    from fallback_worker.metrics import Metrics

    threads: list[str] = []

    class Recording:
        def __getattr__(self, name: str):
            return getattr(embedder_engine, name)

        def run(self, task, batch):
            threads.append(threading.current_thread().name)
            return embedder_engine.run(task, batch)

    async def scenario() -> None:
        batcher = Batcher(Recording(), Metrics(64), max_batch_tokens=4096, max_batch_requests=16, forward_workers=2)  # type: ignore[arg-type]
        batcher.start(asyncio.get_running_loop())
        try:
            for _ in range(20):
                jobs = batcher.submit("embed", [Encoded([5] * 8, [0] * 8, 8)])
                await asyncio.gather(*(j.future for j in jobs))
                await asyncio.sleep(0.002)  # a client's think time: the thread parks in between
        finally:
            batcher.stop()

    asyncio.run(scenario())
    assert len(threads) == 20
    assert len(set(threads[1:])) == 1, threads


def test_windows_serve_the_queue_in_arrival_order(embedder_engine) -> None:
    """A request that arrived early is not overtaken by later, shorter ones beyond its window."""
    import threading

    from fallback_worker.batcher import Batcher
    from fallback_worker.metrics import Metrics

    order: list[int] = []
    gate, entered = threading.Event(), threading.Event()

    class Recording:
        # The real engine; records each batch's input lengths, and holds the first batch at a gate
        # so that the queue can fill up behind it.
        def __getattr__(self, name: str):
            return getattr(embedder_engine, name)

        def run(self, task, batch):
            entered.set()
            gate.wait(30)
            order.extend(len(e.ids) for e in batch)
            return embedder_engine.run(task, batch)

    async def scenario() -> None:
        batcher = Batcher(Recording(), Metrics(64), max_batch_tokens=4096, max_batch_requests=2)  # type: ignore[arg-type]
        batcher.start(asyncio.get_running_loop())
        try:
            first = batcher.submit("embed", [Encoded([5] * 3, [0] * 3, 3)])
            assert await asyncio.to_thread(entered.wait, 30)  # the forward thread holds it in the model
            long_jobs = batcher.submit("embed", [Encoded([5] * 40, [0] * 40, 40) for _ in range(16)])
            short_jobs = batcher.submit("embed", [Encoded([5] * 2, [0] * 2, 2) for _ in range(4)])
            gate.set()
            await asyncio.gather(*(j.future for j in first + long_jobs + short_jobs))
        finally:
            batcher.stop()

    asyncio.run(scenario())
    assert sorted(order) == sorted([3] + [40] * 16 + [2] * 4)
    # Window = 8 batches x 2 = 16 inputs: the 16 long inputs queued first are served before the
    # short ones queued after them, although sorting alone would have put the short ones first.
    assert order == [3] + [40] * 16 + [2] * 4


def test_two_forward_threads_run_two_batches_at_once(embedder_engine) -> None:
    """With forward_workers=2 a second batch runs while the first is still in the model; stop() drains both."""
    import threading

    from fallback_worker.batcher import Batcher
    from fallback_worker.metrics import Metrics

    both_in = threading.Barrier(2, timeout=30)

    class Meeting:
        # The real engine; each forward pass waits until another one is in the model at the same time.
        def __getattr__(self, name: str):
            return getattr(embedder_engine, name)

        def run(self, task, batch):
            both_in.wait()  # raises BrokenBarrierError (the batch fails) if the passes ran one by one
            return embedder_engine.run(task, batch)

    async def scenario() -> list:
        batcher = Batcher(Meeting(), Metrics(64), max_batch_tokens=4096, max_batch_requests=2, forward_workers=2)  # type: ignore[arg-type]
        batcher.start(asyncio.get_running_loop())
        try:
            # One window, two batches of different lengths: one per forward thread.
            jobs = batcher.submit("embed", [Encoded([5] * n, [0] * n, n) for n in (3, 3, 40, 40)])
            return await asyncio.gather(*(j.future for j in jobs))
        finally:
            batcher.stop()

    rows = asyncio.run(scenario())
    assert len(rows) == 4 and all(row.shape == rows[0].shape for row in rows)


def test_a_batch_alone_gets_all_threads_and_batches_together_split_them(embedder_engine) -> None:
    """One client's big request runs on every torch thread; concurrent batches, and tiny ones, share."""
    shares: list[tuple[int, int]] = []  # (tokens in the batch, forward passes sharing the threads)

    class Recording:
        def __getattr__(self, name: str):
            return getattr(embedder_engine, name)

        def use_threads(self, share: int = 1) -> None:
            self._share = share

        def run(self, task, batch):
            shares.append((sum(len(e.ids) for e in batch), self._share))
            return embedder_engine.run(task, batch)

    engine = Recording()
    big = embedder_engine.split_min_tokens // 8 + 1
    _serve_one_request(engine, [big] * 8, max_batch_requests=16, forward_workers=2)  # one batch, alone
    assert shares == [(big * 8, 1)]
    shares.clear()
    _serve_one_request(engine, [3], max_batch_requests=16, forward_workers=2)  # one tiny input: not worth splitting
    assert shares == [(3, 2)]
    shares.clear()
    _serve_one_request(engine, [big] * 16, max_batch_requests=8, forward_workers=2)  # two at once: each takes half
    assert [share for _, share in shares][0] == 2
