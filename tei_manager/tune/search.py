"""Which settings to try, in which order: a small search over a discrete space. Pure.

The space is a few ordered dimensions (batch tokens, batch requests, client batch size, forward
workers, dtype). Throughput at the SLO is roughly unimodal along each of them (too small a batch
wastes the device, too large one adds latency), but on a CPU the landscape is flat and one trial is
a noisy figure, so the search keeps several leads rather than trusting one best point:

1. *coarse*: from a start point (the profile's current setting, or the middle of the space), sweep
   each dimension in turn over a coarse subset of its values (both ends and the middle), moving to
   the best point found so far;
2. *combine*: try the point made of each dimension's best value seen so far, and the corner made of
   each dimension's better end (points the sweep, moving one dimension at a time, may never have put
   together: small batch budgets may pay off only with large client batches);
3. *refine*: best-first over the neighbourhoods (one step along one dimension) of the ``leaders``
   best points measured so far, until every leader's neighbours are measured or the trial cap
   (`search_cap`: a third of the grid, less what the confirmation round will re-measure) is spent.

The search only proposes; its leaders are re-measured longer by the confirmation round (runner),
which decides. Infeasible points (OOM, crash) score as nothing, so the search walks away from them.
The same module runs the full grid, which is what the search is measured against.

``max_concurrent_requests`` is not searched: in a closed-loop trial a permit limit only turns
queueing into 429s, so trials run with enough permits and the recommended value is derived from
the inputs in flight at the SLO (see `recommended_max_concurrent`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Value = int | str
Point = tuple[int, ...]  # one index per dimension


@dataclass(frozen=True)
class Dimension:
    name: str
    values: tuple[Value, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"dimension {self.name} has no values")

    def coarse(self) -> tuple[int, ...]:
        """Indexes of both ends and the middle."""
        last = len(self.values) - 1
        return tuple(sorted({0, last // 2, last}))


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]
    fixed: Mapping[str, Value] = field(default_factory=dict)  # sent with every trial, not searched

    @property
    def size(self) -> int:
        return math.prod(len(d.values) for d in self.dimensions)

    def settings(self, point: Point) -> dict[str, Value]:
        out = dict(self.fixed)
        out.update({d.name: d.values[i] for d, i in zip(self.dimensions, point, strict=True)})
        return out

    def middle(self) -> Point:
        return tuple((len(d.values) - 1) // 2 for d in self.dimensions)

    def nearest(self, settings: Mapping[str, Value]) -> Point:
        """The grid point closest to ``settings`` (per dimension: same value, else nearest number, else the middle)."""
        point = []
        for d in self.dimensions:
            value = settings.get(d.name)
            if value in d.values:
                point.append(d.values.index(value))
            elif isinstance(value, int) and all(isinstance(v, int) for v in d.values):
                point.append(min(range(len(d.values)), key=lambda i: abs(math.log(int(d.values[i]) / value))))
            else:
                point.append((len(d.values) - 1) // 2)
        return tuple(point)

    def grid(self) -> list[Point]:
        return list(itertools.product(*(range(len(d.values)) for d in self.dimensions)))

    def neighbours(self, point: Point) -> list[Point]:
        out = []
        for k, d in enumerate(self.dimensions):
            for step in (-1, 1):
                i = point[k] + step
                if 0 <= i < len(d.values):
                    out.append((*point[:k], i, *point[k + 1:]))
        return out


#: Evaluate one point and return its score (throughput at the SLO; 0 or less for infeasible).
Objective = Callable[[Point], float]
#: Asked before each new trial; False stops the search (time budget spent).
MayContinue = Callable[[], bool]


@dataclass
class SearchResult:
    scores: dict[Point, float] = field(default_factory=dict)  # in the order they were tried
    stopped_early: bool = False  # the time budget (``may_continue``) stopped it
    capped: bool = False  # it reached ``max_trials`` with more to try

    @property
    def trials(self) -> int:
        return len(self.scores)

    @property
    def best(self) -> Point | None:
        if not self.scores:
            return None
        return max(self.scores, key=lambda p: self.scores[p])

    def leaders(self, n: int) -> list[Point]:
        """The ``n`` best points measured, best first (ties: the earlier trial)."""
        return sorted(self.scores, key=lambda p: -self.scores[p])[:n]


class _Evaluator:
    def __init__(self, objective: Objective, may_continue: MayContinue, max_trials: int | None) -> None:
        self.objective = objective
        self.may_continue = may_continue
        self.max_trials = max_trials
        self.result = SearchResult()

    def __call__(self, point: Point) -> float | None:
        """The point's score, measuring it once; None when the budget allows no more trials."""
        if point in self.result.scores:
            return self.result.scores[point]
        if self.max_trials is not None and self.result.trials >= self.max_trials:
            self.result.capped = True
            return None
        if not self.may_continue():
            self.result.stopped_early = True
            return None
        score = self.objective(point)
        self.result.scores[point] = score
        return score


def outside_space(space: Space, settings: Mapping[str, Value]) -> list[str]:
    """Where ``settings`` fall outside ``space``: one line per dimension (or fixed value) they set to
    something else. Dimensions ``settings`` do not name are not known, so not reported."""
    out = []
    for d in space.dimensions:
        value = settings.get(d.name)
        if value is not None and value not in d.values:
            out.append(f"{d.name} {value} (searched: {', '.join(map(str, d.values))})")
    for name, fixed in space.fixed.items():
        value = settings.get(name)
        if value is not None and value != fixed:
            out.append(f"{name} {value} (searched: {fixed})")
    return out


def search_cap(space: Space, reserved: int = 0) -> int:
    """Most distinct points the search may measure: a third of the grid, less ``reserved`` trials
    (the confirmation round's re-measurements), so that everything stays within a third; at least 1."""
    return max(1, space.size // 3 - reserved)


def _combined(space: Space, scores: Mapping[Point, float]) -> Point:
    """Each dimension's best value over the points measured (by the best score seen with it)."""
    point = []
    for k in range(len(space.dimensions)):
        by_value: dict[int, float] = {}
        for p, score in scores.items():
            by_value[p[k]] = max(by_value.get(p[k], float("-inf")), score)
        point.append(max(by_value, key=lambda i: by_value[i]))
    return tuple(point)


def _best_ends(space: Space, scores: Mapping[Point, float], best: Point) -> Point:
    """The corner made of each dimension's better end (by the best score seen at either end);
    a dimension whose ends were not both measured keeps ``best``'s value."""
    point = []
    for k, d in enumerate(space.dimensions):
        last = len(d.values) - 1
        seen = {end: max((s for p, s in scores.items() if p[k] == end), default=None) for end in (0, last)}
        low, high = seen[0], seen[last]
        if low is None or high is None:
            point.append(best[k])
        else:
            point.append(0 if low >= high else last)
    return tuple(point)


def coordinate_search(space: Space, objective: Objective, *, start: Point | None = None,
                      may_continue: MayContinue = lambda: True, max_trials: int | None = None,
                      leaders: int = 3) -> SearchResult:
    """Coarse sweeps per dimension, the combined point, then best-first refinement around the
    ``leaders`` best points (see the module docstring)."""
    evaluate = _Evaluator(objective, may_continue, max_trials)
    best = start if start is not None else space.middle()
    if evaluate(best) is None:
        return evaluate.result
    scores = evaluate.result.scores

    for k, d in enumerate(space.dimensions):
        for i in d.coarse():
            candidate = (*best[:k], i, *best[k + 1:])
            s = evaluate(candidate)
            if s is None:
                return evaluate.result
            if s > scores[best]:
                best = candidate
    for candidate in (_combined(space, scores), _best_ends(space, scores, best)):
        if evaluate(candidate) is None:
            return evaluate.result
    while True:
        # The untried neighbours of the current leaders, the best leader's first: one trial at a time,
        # then the leaders are ranked again, so a lucky or unlucky figure moves the search only a little.
        frontier = [n for lead in evaluate.result.leaders(leaders) for n in space.neighbours(lead) if n not in scores]
        if not frontier:
            return evaluate.result
        if evaluate(frontier[0]) is None:
            return evaluate.result


def full_grid(space: Space, objective: Objective, *, may_continue: MayContinue = lambda: True) -> SearchResult:
    """Every point, in grid order."""
    evaluate = _Evaluator(objective, may_continue, None)
    for point in space.grid():
        if evaluate(point) is None:
            break
    return evaluate.result


# --- The settings that matter per runtime --------------------------------------------------------

#: Padded tokens per forward pass: powers of two around the usual range.
GPU_BATCH_TOKENS = (4096, 8192, 16384, 32768, 65536)
CPU_BATCH_TOKENS = (512, 1024, 2048, 4096, 8192)
CLIENT_BATCHES = (1, 4, 8, 16, 32)


def default_space(runtime: str, *, on_gpu: bool, kind: str, documents_per_query: int = 0,
                  max_input_tokens: int = 512) -> Space:
    """The dimensions worth searching for ``runtime`` (``tei`` or ``fallback``) on this device.

    Batch-token budgets below the model's max input length would truncate long inputs, so they are
    left out. Rerank requests carry a query's documents as the tenant sends them, so the client
    batch size is fixed to fit them rather than searched.
    """
    tokens = tuple(t for t in (GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS) if t >= max_input_tokens)
    if not tokens:
        tokens = (1 << math.ceil(math.log2(max_input_tokens)),)
    dims = [Dimension("max_batch_tokens", tokens)]
    fixed: dict[str, Value] = {}
    if kind == "embed":
        dims.append(Dimension("max_client_batch_size", CLIENT_BATCHES))
    else:
        fixed["max_client_batch_size"] = max(1, documents_per_query)
    if runtime == "tei":
        dims.append(Dimension("max_batch_requests", (8, 32, 128) if on_gpu else (4, 16, 64)))
    elif runtime == "fallback":
        dims.append(Dimension("forward_workers", (1, 2) if on_gpu else (1, 2, 3)))
        dims.append(Dimension("dtype", ("float16", "bfloat16") if on_gpu else ("float32", "bfloat16")))
    else:
        raise ValueError(f"unknown runtime {runtime!r}; expected tei or fallback")
    return Space(tuple(dims), fixed)


def restrict(space: Space, **values: Sequence[Value]) -> Space:
    """The same space with some dimensions narrowed (or fixed, given one value) – e.g. for a short tune."""
    dims: list[Dimension] = []
    fixed = dict(space.fixed)
    for d in space.dimensions:
        chosen = values.get(d.name)
        if chosen is None:
            dims.append(d)
        elif len(chosen) == 1:
            fixed[d.name] = chosen[0]
        else:
            dims.append(Dimension(d.name, tuple(chosen)))
    unknown = set(values) - {d.name for d in space.dimensions}
    if unknown:
        raise ValueError(f"no such dimension(s): {sorted(unknown)}")
    return Space(tuple(dims), fixed)


def recommended_max_concurrent(concurrency_at_slo: int, client_batch: int) -> int:
    """Permits (one per input) for the instance: twice the inputs in flight at the SLO, to a power of two.

    Twice, so a burst queues a little before it is refused; bounded, so a flood gets 429s quickly
    instead of every request breaking the SLO.
    """
    inflight = max(1, concurrency_at_slo * client_batch)
    return 1 << math.ceil(math.log2(2 * inflight))


# --- Co-located deployments ----------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One measured setting of one deployment."""

    settings: Mapping[str, Value]
    throughput: float
    peak_memory_bytes: int


@dataclass(frozen=True)
class Colocation:
    choice: dict[str, Candidate]  # deployment -> the chosen setting
    total_bytes: int
    capacity_bytes: int

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.total_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes


def headroom(peaks: Mapping[str, int], capacity_bytes: int) -> int:
    """What is left of the device when every instance is at its peak at once (negative: it does not fit).

    Peaks, not steady state: co-located instances warm up together at apply time.
    """
    return capacity_bytes - sum(peaks.values())


def choose_colocated(candidates: Mapping[str, Sequence[Candidate]], capacity_bytes: int,
                     *, per_deployment: int = 6) -> Colocation | None:
    """One setting per deployment whose peaks fit ``capacity_bytes`` together, best overall.

    "Best" is the largest sum of each deployment's throughput relative to its own best, so that no
    deployment is sacrificed for a faster neighbour's extra inputs/s; ties go to more headroom.
    Only each deployment's ``per_deployment`` best candidates are combined. None when nothing fits.
    """
    names = sorted(candidates)
    pools: list[list[Candidate]] = []
    for name in names:
        ranked = sorted(candidates[name], key=lambda c: c.throughput, reverse=True)[:per_deployment]
        if not ranked:
            return None
        pools.append(ranked)
    tops = [max(pool[0].throughput, 1e-9) for pool in pools]
    best: tuple[float, int, tuple[Candidate, ...]] | None = None
    for combo in itertools.product(*pools):
        total = sum(c.peak_memory_bytes for c in combo)
        if total > capacity_bytes:
            continue
        value = sum(c.throughput / top for c, top in zip(combo, tops, strict=True))
        key = (round(value, 9), -total)
        if best is None or key > (best[0], -best[1]):
            best = (key[0], total, combo)
    if best is None:
        return None
    return Colocation(dict(zip(names, best[2], strict=True)), best[1], capacity_bytes)
