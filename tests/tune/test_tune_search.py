"""The search against a synthetic objective: far fewer trials than the grid, and as good a result."""

from __future__ import annotations

import math
import random

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
    search_cap,
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


#: The space of the documented CPU run: 5 batch budgets x 5 client batch sizes x 1-2 forward workers.
MEASURED_SPACE = restrict(default_space("fallback", on_gpu=False, kind="embed", max_input_tokens=256),
                          forward_workers=[1, 2], dtype=["bfloat16"])
#: What the confirmation round re-measures on that run: 2 leaders x 2 rounds.
CONFIRMATIONS = 4


def corner_model(space: Space):  # type: ignore[no-untyped-def]
    """A landscape whose best lies in a corner that sweeping one dimension at a time never reaches:
    from the current setting each dimension alone prefers a middle batch budget and one forward
    worker, but 512 tokens with client batches of 32 (one request fills a batch) pays off, and
    with two forward workers even more (the first measured run's grid best: 512 x 32 x 2)."""

    def objective(point: Point) -> float:
        s = space.settings(point)
        t = int(math.log2(int(s["max_batch_tokens"]))) - 9  # 0 at 512 ... 4 at 8192
        c = int(math.log2(int(s["max_client_batch_size"])))  # 0 at 1 ... 5 at 32
        two = int(s["forward_workers"]) == 2
        score = 62 - 0.8 * (t - 2) ** 2 + 0.2 * (4 - t) + 0.6 * c - (0.5 if two else 0)
        if t == 0 and c == 5:
            score += 6 + (8 if two else 0)
        return score

    return objective


def true_best(space: Space, objective) -> float:  # type: ignore[no-untyped-def]
    return max(objective(p) for p in space.grid())


def test_the_search_finds_a_corner_the_coarse_sweep_never_combines() -> None:
    space = MEASURED_SPACE
    assert space.size == 50
    objective = corner_model(space)
    cap = search_cap(space, CONFIRMATIONS)
    assert cap == 12
    # From the profile's current setting, as the runner starts it (forward workers unset: the first value).
    searched = coordinate_search(space, objective, start=space.nearest({"max_batch_tokens": 4096,
                                                                        "max_client_batch_size": 16}),
                                 max_trials=cap)
    assert searched.trials <= cap
    assert searched.trials + CONFIRMATIONS <= space.size / 3
    assert space.settings(searched.best) == {  # type: ignore[arg-type]
        "max_batch_tokens": 512, "max_client_batch_size": 32, "forward_workers": 2, "dtype": "bfloat16"}


@pytest.mark.parametrize("seed", range(8))
def test_with_noisy_trials_a_leader_is_within_5_percent_of_the_true_best(seed: int) -> None:
    """Each trial is the true figure with 6% noise, as a short trial on a shared CPU is; the confirmation
    round re-measures the search's two leaders, so one of them must be good, not the single top figure."""
    space = MEASURED_SPACE
    truth = throughput_model_for(space)
    rng = random.Random(seed)

    def noisy(point: Point) -> float:
        return truth(point) * rng.gauss(1.0, 0.06)

    searched = coordinate_search(space, noisy, start=space.nearest({"max_batch_tokens": 4096,
                                                                    "max_client_batch_size": 16}),
                                 max_trials=search_cap(space, CONFIRMATIONS))
    assert searched.trials <= 12
    leading = max(truth(p) for p in searched.leaders(2))
    assert leading >= 0.95 * true_best(space, truth)


def throughput_model_for(space: Space):  # type: ignore[no-untyped-def]
    """`throughput_model` without its call log, for spaces that fix some dimensions."""
    model = throughput_model(space)
    return lambda point: model(point)


def test_the_trial_cap_leaves_room_for_the_confirmation_round() -> None:
    space = MEASURED_SPACE
    assert search_cap(space) == 16 and search_cap(space, 4) == 12
    assert search_cap(Space((Dimension("a", (1, 2)),)), 6) == 1  # never below one trial
    searched = coordinate_search(space, corner_model(space), max_trials=5)
    assert searched.trials == 5 and searched.capped and not searched.stopped_early


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
