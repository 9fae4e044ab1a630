"""Index-safe rollouts: what a deployment computes, measured on a fixed probe set.

Vectors already stored in a tenant's vector database are only comparable with new ones if the
embedder did not change under them: a new revision, TEI <-> fallback worker, another dtype or
pooling can each move the vectors.  So:

* when a deployment first becomes healthy, its **fingerprint** is recorded: the vectors (embed) or
  scores (rerank) of `PROBES`, a fixed multilingual set, with what the deployment computes
  (`computes()`: model, revision, local path, runtime, dtype, pooling, rerank mode);
* when a later apply changes any of those, each new instance (every replica) is measured once
  healthy, before the apply completes (the old instance is restored if it refuses), and compared per probe: cosine of
  the vectors, or the difference of the scores.  Beyond `MIN_COSINE` / `MAX_SCORE_DELTA` (or the
  deployment's own `fingerprint:` thresholds) the apply refuses with `EmbeddingDriftError`, naming
  each probe's figure and what changed, unless the change is accepted
  (`apply --accept-embedding-change`); the accepted change is kept as the fingerprint's `Drift`.

Fingerprints live in the profile's state directory (`fingerprints/<deployment>.json`): vectors
and scores of public probe texts, no keys.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from tei_manager.core.models import Profile
from tei_manager.core.plan import InstancePlan
from tei_manager.errors import ApplyError
from tei_manager.instance_keys import instance_headers
from tei_manager.state import state_dir

#: Fixed probe texts: several scripts and languages (Chinese included), code and numbers.
PROBES: tuple[str, ...] = (
    "The quarterly report shows revenue grew by 12 percent.",
    "季度报告显示收入增长了百分之十二。",
    "如何在向量数据库中检索相似的文档？",
    "Der Vertrag endet am 31. Dezember 2025.",
    "東京の天気は明日晴れるでしょう。",
    "def cosine(a, b): return dot(a, b) / (norm(a) * norm(b))",
)
RERANK_QUERY = "revenue growth in the quarterly report"
#: Below this cosine (any probe), stored vectors are no longer comparable with new ones.
MIN_COSINE = 0.99
#: Above this score difference (any probe), a reranker orders results differently.
MAX_SCORE_DELTA = 0.05
FINGERPRINTS = "fingerprints"


def computes(inst: InstancePlan) -> dict[str, str | None]:
    """What decides an instance's outputs; a change in any of these is checked against the fingerprint."""
    s = inst.settings
    return {"model": inst.model.hub_id, "revision": inst.model.revision, "path": inst.model.local_path,
            "runtime": inst.runtime, "dtype": s.dtype or (inst.vram.dtype if inst.vram else None),
            "pooling": s.pooling, "rerank_mode": s.rerank_mode, "task": inst.task}


@dataclass(frozen=True)
class Thresholds:
    """How far a deployment's outputs may move before an apply refuses (the profile's `fingerprint:`)."""

    min_cosine: float = MIN_COSINE
    max_score_delta: float = MAX_SCORE_DELTA


@dataclass(frozen=True)
class Drift:
    """The last change an apply let through: what changed and how far the outputs moved."""

    changed: list[str]  # e.g. ["revision 'v1' -> 'v2'"]
    measure: str  # "cosine" (embed: the lowest over the probes) or "score delta" (rerank: the largest)
    worst: float
    threshold: float
    beyond: bool  # beyond the threshold: it switched only because the change was accepted
    figures: list[str]  # one per probe, as the refusal names them
    accepted_at: float

    def describe(self) -> str:
        which = "lowest cosine" if self.measure == "cosine" else "largest score delta"
        return (f"{'drift' if self.beyond else 'no drift'} after {'; '.join(self.changed)}: "
                f"{which} {self.worst:.6f} (limit {self.threshold})")


@dataclass(frozen=True)
class Fingerprint:
    deployment: str
    task: str
    computes: dict[str, str | None]
    outputs: list[Any]  # a vector per probe (embed) or a score per probe (rerank)
    recorded_at: float
    last_drift: Drift | None = None

    def age_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.recorded_at

    def as_status(self, now: float | None = None) -> dict[str, Any]:
        """What `status --json` shows: when it was recorded, what it measured, the last accepted change."""
        drift = self.last_drift
        return {
            "recorded_at": _iso(self.recorded_at),
            "age_s": round(self.age_s(now), 1),
            "computes": self.computes,
            "last_drift": None if drift is None else {
                "what_changed": drift.changed, "measure": drift.measure, "worst": drift.worst,
                "threshold": drift.threshold, "beyond": drift.beyond, "accepted_at": _iso(drift.accepted_at),
                "probes": drift.figures,
            },
        }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def path_of(profile: str, deployment: str) -> Path:
    return state_dir(profile) / FINGERPRINTS / f"{deployment}.json"


def load(profile: str, deployment: str) -> Fingerprint | None:
    try:
        data = json.loads(path_of(profile, deployment).read_text())
        drift = data.pop("last_drift", None)
        # Records written before drifts were structured held a sentence: the fingerprint itself is
        # still the baseline to compare with, only that sentence is dropped.
        return Fingerprint(**data, last_drift=Drift(**drift) if isinstance(drift, dict) else None)
    except (OSError, ValueError, TypeError):
        return None


def recorded(profile: str) -> list[Fingerprint]:
    """Every fingerprint recorded for a profile's deployments."""
    directory = state_dir(profile) / FINGERPRINTS
    found = [load(profile, p.stem) for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    return [f for f in found if f is not None]


def save(profile: str, fingerprint: Fingerprint) -> None:
    target = path_of(profile, fingerprint.deployment)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    target.write_text(json.dumps(asdict(fingerprint)))


def measure(inst: InstancePlan, *, timeout_s: float = 60.0) -> list[Any]:
    """The probe set's vectors or scores, from a healthy instance."""
    host = "127.0.0.1" if inst.bind in ("0.0.0.0", "") else inst.bind
    base = f"http://{host}:{inst.host_port}"
    headers = instance_headers(inst)
    with httpx.Client(timeout=timeout_s) as client:
        if inst.task == "rerank":
            response = client.post(f"{base}/rerank", headers=headers,
                                   json={"query": RERANK_QUERY, "texts": list(PROBES), "raw_scores": True})
            response.raise_for_status()
            scores = {int(r["index"]): float(r["score"]) for r in response.json()}
            return [scores[i] for i in range(len(PROBES))]
        response = client.post(f"{base}/embed", headers=headers, json={"inputs": list(PROBES)})
        response.raise_for_status()
        return [[float(x) for x in vector] for vector in response.json()]


def cosine(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return 0.0  # another dimension: nothing stored is comparable
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


@dataclass(frozen=True)
class Measured:
    """New outputs compared with a recorded fingerprint, probe by probe."""

    beyond: bool  # any probe beyond the threshold
    worst: float  # the lowest cosine (embed) or the largest score delta (rerank)
    figures: list[str]


def drift(old: Fingerprint, task: str, outputs: list[Any], limits: Thresholds = Thresholds()) -> Measured:
    """How far new outputs moved from a recorded fingerprint, one figure per probe."""
    figures: list[str] = []
    values: list[float] = []
    for i, (before, after) in enumerate(zip(old.outputs, outputs, strict=False)):
        label = PROBES[i][:24]
        if task == "rerank":
            delta = abs(float(after) - float(before))
            values.append(delta)
            figures.append(f"probe {i} {label!r}: score {before:.6f} -> {after:.6f} (delta {delta:.6f})")
        else:
            value = cosine(before, after)
            values.append(value)
            figures.append(f"probe {i} {label!r}: cosine {value:.6f}")
    if task == "rerank":
        worst = max(values, default=0.0)
        return Measured(worst > limits.max_score_delta, worst, figures)
    worst = min(values, default=1.0)
    return Measured(worst < limits.min_cosine, worst, figures)


def changes(old: dict[str, str | None], new: dict[str, str | None]) -> list[str]:
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in new if old.get(key) != new.get(key)]


class EmbeddingDriftError(ApplyError):
    """A new instance computes outputs that drift from the deployment's fingerprint (the apply is
    rolled back); applying again with the change accepted lets it through."""


class FingerprintGuard:
    """The apply hook: checks each new instance of a deployment whose computation changed, and
    records fingerprints once the apply has succeeded."""

    def __init__(self, profile: str, *, accept_change: bool = False, accepted: frozenset[str] = frozenset(),
                 limits: Mapping[str, Thresholds] | None = None) -> None:
        self.profile = profile
        self.accept_change = accept_change
        self.accepted = accepted  # deployments whose profile says `accept_embedding_change: true`
        self.limits = dict(limits or {})  # per deployment, from the profile's `fingerprint:`
        self.pending: dict[str, Fingerprint] = {}

    @classmethod
    def for_profile(cls, profile: Profile, *, accept_change: bool = False) -> FingerprintGuard:
        """The guard of an apply of `profile`: its deployments' acceptances and thresholds."""
        return cls(profile.name, accept_change=accept_change,
                   accepted=frozenset(d.instance_prefix for d in profile.deployments if d.accept_embedding_change),
                   limits={d.instance_prefix: Thresholds(d.fingerprint.min_cosine, d.fingerprint.max_score_delta)
                           for d in profile.deployments})

    def check(self, inst: InstancePlan) -> None:
        """Called when a new instance is healthy, before the apply completes; raises on drift.

        Every replica is checked, not only the first: a rollout replaces them one by one, and a
        replica on other hardware (another GPU type, hence another image or attention kernel) can
        drift where replica 0 did not."""
        old = load(self.profile, inst.deployment)
        now = computes(inst)
        if old is None or old.computes == now:
            return
        outputs = measure(inst)
        limits = self.limits.get(inst.deployment, Thresholds())
        measured = drift(old, inst.task, outputs, limits)
        changed = changes(old.computes, now)
        rerank = inst.task == "rerank"
        if measured.beyond and not (self.accept_change or inst.deployment in self.accepted):
            threshold = f"score delta {limits.max_score_delta}" if rerank else f"cosine {limits.min_cosine}"
            replica = f" (replica {inst.replica}, {inst.name})" if inst.replica else ""
            raise EmbeddingDriftError(
                f"{inst.deployment}{replica} would compute different {'scores' if rerank else 'embeddings'}"
                f" ({'; '.join(changed)}); beyond {threshold}:\n    " + "\n    ".join(measured.figures),
                where=inst.name,
                fix="vectors stored with the old model are not comparable: re-index, or pass "
                "--accept-embedding-change to switch anyway",
            )
        accepted = Drift(changed=changed, measure="score delta" if rerank else "cosine", worst=measured.worst,
                         threshold=limits.max_score_delta if rerank else limits.min_cosine, beyond=measured.beyond,
                         figures=measured.figures, accepted_at=time.time())
        first = self.pending.get(inst.deployment)
        if first is None:  # the first replica measured gives the new fingerprint
            self.pending[inst.deployment] = Fingerprint(deployment=inst.deployment, task=inst.task, computes=now,
                                                        outputs=outputs, recorded_at=time.time(), last_drift=accepted)
        elif first.last_drift is not None and _worse(accepted, first.last_drift):
            # The drift kept is the worst any replica showed.
            self.pending[inst.deployment] = replace(first, last_drift=accepted)

    def record(self, instances: list[InstancePlan]) -> None:
        """After a successful apply: keep accepted fingerprints; measure deployments that have none."""
        for inst in instances:
            if inst.deployment in self.pending:
                save(self.profile, self.pending.pop(inst.deployment))
            elif inst.replica == 0 and load(self.profile, inst.deployment) is None:
                try:
                    outputs = measure(inst)
                except httpx.HTTPError:
                    continue  # recorded on the next apply
                save(self.profile, Fingerprint(deployment=inst.deployment, task=inst.task, computes=computes(inst),
                                               outputs=outputs, recorded_at=time.time()))


def _worse(a: Drift, b: Drift) -> bool:
    """Did `a` move the outputs further than `b`?  (Lower cosine, or larger score delta.)"""
    return a.worst > b.worst if a.measure == "score delta" else a.worst < b.worst
