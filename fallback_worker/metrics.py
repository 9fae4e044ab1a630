"""TEI's Prometheus metrics (te_*), rendered by hand in the text format.

prometheus-client appends `_total` to counters; TEI's clients and dashboards expect the bare
names (`te_request_count`), so we keep the few types we need here instead.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"


def _num(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


class Counter:
    def __init__(self, name: str) -> None:
        self.name = name
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> Iterable[str]:
        yield f"# TYPE {self.name} counter"
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(key)} {_num(v)}"


class Gauge:
    def __init__(self, name: str) -> None:
        self.name = name
        self.current = 0.0

    def set(self, value: float) -> None:
        self.current = value

    def render(self) -> Iterable[str]:
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {_num(self.current)}"


class Histogram:
    def __init__(self, name: str, buckets: list[float]) -> None:
        self.name = name
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect_left(self.buckets, value)] += 1
            self.total += value
            self.n += 1

    def render(self) -> Iterable[str]:
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        # counts has one more slot than buckets (the +Inf overflow), reported from `n` below.
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            yield f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.n}'
        yield f"{self.name}_sum {_num(self.total)}"
        yield f"{self.name}_count {self.n}"


# TEI: 35 geometric buckets from 15 us, x1.5 each.
DURATION_BUCKETS = [1.5e-5 * 1.5**i for i in range(35)]


class Metrics:
    """The te_* families TEI exports; ``phase`` histograms per request, embed and predict."""

    def __init__(self, max_input_length: int) -> None:
        self.request_count = Counter("te_request_count")
        self.request_success = Counter("te_request_success")
        self.request_failure = Counter("te_request_failure")
        self.embed_count = Counter("te_embed_count")
        self.embed_success = Counter("te_embed_success")
        self.predict_count = Counter("te_predict_count")
        self.predict_success = Counter("te_predict_success")
        self.queue_size = Gauge("te_queue_size")
        self.durations: dict[str, Histogram] = {}
        for family in ("request", "embed", "predict"):
            for phase in ("", "_tokenization", "_queue", "_inference"):
                name = f"te_{family}{phase}_duration"
                self.durations[name] = Histogram(name, DURATION_BUCKETS)
        length_buckets, b = [], 1
        while b < max_input_length:
            length_buckets.append(float(b))
            b *= 2
        length_buckets.append(float(max_input_length))
        self.input_length = Histogram("te_request_input_length", length_buckets)
        self.batch_next_size = Histogram("te_batch_next_size", [float(2**i) for i in range(13)])
        self.batch_next_tokens = Histogram("te_batch_next_tokens", [float(2**i) for i in range(21)])

    def failure(self, err: str, amount: int = 1) -> None:
        self.request_failure.inc(amount, err=err)

    def observe_phases(self, family: str, total: float, tokenization: float, queue: float, inference: float) -> None:
        for fam in ("request", family):
            self.durations[f"te_{fam}_duration"].observe(total)
            self.durations[f"te_{fam}_tokenization_duration"].observe(tokenization)
            self.durations[f"te_{fam}_queue_duration"].observe(queue)
            self.durations[f"te_{fam}_inference_duration"].observe(inference)

    def render(self) -> str:
        families: list[Counter | Gauge | Histogram] = [
            self.request_count,
            self.request_success,
            self.request_failure,
            self.embed_count,
            self.embed_success,
            self.predict_count,
            self.predict_success,
            self.queue_size,
            *self.durations.values(),
            self.input_length,
            self.batch_next_size,
            self.batch_next_tokens,
        ]
        lines: list[str] = []
        for fam in families:
            lines.extend(fam.render())
        return "\n".join(lines) + "\n"
