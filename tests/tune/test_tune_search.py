"""The search against a synthetic objective: far fewer trials than the grid, and as good a result."""

from __future__ import annotations

import math

import pytest

from tei_manager.tune.search import (
    Candidate,
    Dimension,
    Point,
    Space,
    choose_colocated,
    coordinate_search,
    default_space,
    full_grid,
    headroom,
    recommended_max_concurrent,
    restrict,
)

GiB = 1 << 30


def throughput_model(space: Space, *, oom_tokens: int | None = None):  # type: ignore[no-untyped-def]
    """Inputs/s shaped like a real instance: rises with batch tokens until latency bites, best at
    2 forward workers, bfloat16 a bit faster, a client batch of 16 best; OOM above ``oom_tokens``."""
    calls: list[Point] = []

    def objective(point: Point) -> float:
        calls.append(point)
        s = space.settings(point)
        tokens = int(s["max_batch_tokens"])
        if oom_tokens is not None and tokens > oom_tokens:
            return 0.0  # infeasible
        t = math.exp(-((math.log2(tokens) - math.log2(2048)) ** 2) / 4)
        c = math.exp(-((math.log2(int(s["max_client_batch_size"])) - 4) ** 2) / 6)
        w = {1: 0.7, 2: 1.0, 3: 0.85}[int(s["forward_workers"])]
        d = 1.08 if s["dtype"] == "bfloat16" else 1.0
        return 1000 * t * c * w * d

    objective.calls = calls  # type: ignore[attr-defined]
    return objective


def test_search_finds_the_grid_best_with_a_fraction_of_its_trials() -> None:
    space = default_space("fallback", on_gpu=False, kind="embed", max_input_tokens=256)
    assert space.size == 150
    grid = full_grid(space, throughput_model(space))
    assert grid.trials == space.size
    best = grid.scores[grid.best]  # type: ignore[index]

    searched = coordinate_search(space, throughput_model(space), start=space.nearest(
        {"max_batch_tokens": 4096, "max_client_batch_size": 16}))
    assert searched.trials <= space.size / 3
    assert searched.scores[searched.best] >= 0.95 * best  # type: ignore[index]
    assert space.settings(searched.best) == space.settings(grid.best)  # type: ignore[arg-type]


def test_search_walks_away_from_out_of_memory_settings() -> None:
    space = default_space("fallback", on_gpu=False, kind="embed", max_input_tokens=256)
    searched = coordinate_search(space, throughput_model(space, oom_tokens=1024),
                                 start=space.nearest({"max_batch_tokens": 8192}))
    chosen = space.settings(searched.best)  # type: ignore[arg-type]
    assert int(chosen["max_batch_tokens"]) <= 1024
    assert searched.scores[searched.best] > 0  # type: ignore[index]
    # The infeasible points it tried are kept (a report shows them).
    assert any(score == 0 for score in searched.scores.values())


def test_search_never_repeats_a_trial_and_honours_the_budget() -> None:
    space = default_space("tei", on_gpu=True, kind="embed")

    def score(point: Point) -> float:
        s = space.settings(point)
        return float(int(s["max_batch_tokens"]) // 1000 + int(s["max_client_batch_size"]))

    searched = coordinate_search(space, score)
    assert len(set(searched.scores)) == searched.trials

    left = iter([True] * 3 + [False] * 100)
    capped = coordinate_search(space, score, may_continue=lambda: next(left))
    assert capped.trials == 3 and capped.stopped_early
    assert coordinate_search(space, score, max_trials=2).trials == 2


def test_spaces_per_runtime() -> None:
    tei = default_space("tei", on_gpu=True, kind="embed")
    assert [d.name for d in tei.dimensions] == ["max_batch_tokens", "max_client_batch_size", "max_batch_requests"]
    fb = default_space("fallback", on_gpu=True, kind="rerank", documents_per_query=20, max_input_tokens=8192)
    assert [d.name for d in fb.dimensions] == ["max_batch_tokens", "forward_workers", "dtype"]
    # No budget below the model's max input length (it would truncate), and rerank requests fit a query's documents.
    assert min(int(v) for v in fb.dimensions[0].values) == 8192
    assert fb.fixed == {"max_client_batch_size": 20}
    with pytest.raises(ValueError, match="unknown runtime"):
        default_space("vllm", on_gpu=True, kind="embed")


def test_restrict_and_nearest() -> None:
    space = Space((Dimension("a", (1, 2, 4, 8)), Dimension("b", ("x", "y"))))
    assert space.nearest({"a": 5, "b": "y"}) == (2, 1)  # 5 is nearer 4 than 8 on a log scale
    assert space.nearest({}) == (1, 0)
    narrow = restrict(space, a=[2, 4], b=["y"])
    assert narrow.size == 2 and narrow.fixed == {"b": "y"}
    assert narrow.settings((1,)) == {"a": 4, "b": "y"}


def test_recommended_permits_cover_twice_the_inputs_in_flight_at_the_slo() -> None:
    assert recommended_max_concurrent(8, 16) == 256
    assert recommended_max_concurrent(3, 16) == 128
    assert recommended_max_concurrent(1, 1) == 2


def test_co_located_peaks_must_fit_at_once() -> None:
    assert headroom({"embed": 30 * GiB, "rerank": 10 * GiB}, 48 * GiB) == 8 * GiB
    assert headroom({"embed": 40 * GiB, "rerank": 10 * GiB}, 48 * GiB) < 0

    embed = [Candidate({"max_batch_tokens": 32768}, 1000, 30 * GiB),
             Candidate({"max_batch_tokens": 16384}, 950, 18 * GiB)]
    rerank = [Candidate({"max_batch_tokens": 16384}, 400, 25 * GiB),
              Candidate({"max_batch_tokens": 8192}, 390, 14 * GiB)]
    alone = choose_colocated({"embed": embed, "rerank": rerank}, 80 * GiB)
    assert alone is not None
    assert alone.choice["embed"].throughput == 1000 and alone.choice["rerank"].throughput == 400
    assert alone.headroom_bytes == 25 * GiB and alone.fits

    # On a 48 GiB card the two best settings (55 GiB at once) do not fit: each gives a little.
    shared = choose_colocated({"embed": embed, "rerank": rerank}, 48 * GiB)
    assert shared is not None
    assert shared.total_bytes <= 48 * GiB
    assert (shared.choice["embed"].throughput, shared.choice["rerank"].throughput) == (1000, 390)
    assert shared.headroom_bytes == 4 * GiB

    assert choose_colocated({"embed": embed, "rerank": rerank}, 20 * GiB) is None
