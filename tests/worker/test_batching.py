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


def test_request_cap_and_tasks_do_not_mix() -> None:
    jobs = _jobs([5] * 5) + _jobs([5] * 2, task="classify")
    batches = plan_batches(jobs, max_batch_tokens=10_000, max_batch_requests=2)
    assert all(len(b) <= 2 for b in batches)
    assert all(len({j.task for j in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 7
