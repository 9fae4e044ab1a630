"""What a tune sends: the tenant's own texts, or a synthetic length distribution.

Lengths and languages decide how a batch budget fills (a Chinese sentence is one token per
character or so, an English one about 1.3 per word), so the best source is a sample of real
traffic: JSONL with a ``text`` field per line (embed) or ``query`` + ``documents`` (rerank), or
plain text with one input per line. Without one, `synthetic()` draws lengths from a log-normal
distribution in English and/or Chinese.

Everything is deterministic for a seed, so two trials of one tune send the same requests.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tei_manager.errors import TeiManagerError

Kind = Literal["embed", "rerank"]

# Common words and characters for synthetic text: real-looking enough for a tokenizer to split
# them like traffic (word pieces for English, one or two tokens per character for Chinese).
_EN_WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "this",
    "are", "be", "or", "an", "which", "have", "not", "it", "has", "but", "were", "their", "its", "one", "all",
    "can", "more", "time", "also", "after", "new", "first", "two", "other", "between", "into", "used", "system",
    "data", "model", "search", "result", "query", "document", "service", "customer", "order", "invoice", "payment",
    "policy", "report", "market", "growth", "energy", "river", "city", "engineer", "student", "network", "memory",
    "latency", "throughput", "embedding", "ranking", "language", "question", "answer", "summary",
)
_ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所"
    "民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日"
    "那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想"
)
# Sentence-sized chunks of Chinese text: characters per "word" of the length distribution.
_ZH_CHUNK = 4


class WorkloadError(TeiManagerError):
    """A workload file cannot be read or has the wrong shape (exit code 2: the input is wrong)."""

    exit_code = 2


@dataclass(frozen=True)
class RerankItem:
    query: str
    documents: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    """A pool of inputs of one shape. Requests cycle through it in a seeded order."""

    kind: Kind
    texts: tuple[str, ...] = ()
    rerank: tuple[RerankItem, ...] = ()
    source: str = "synthetic"

    def __post_init__(self) -> None:
        if not (self.texts if self.kind == "embed" else self.rerank):
            raise WorkloadError(f"the {self.kind} workload from {self.source} holds no inputs",
                                fix="give at least one non-empty line")

    def __len__(self) -> int:
        return len(self.texts) if self.kind == "embed" else len(self.rerank)

    @property
    def documents_per_query(self) -> int:
        """The most documents one rerank request carries (0 for embed): the client batch size it needs."""
        return max((len(item.documents) for item in self.rerank), default=0)

    def sample(self, n: int, *, seed: int) -> Workload:
        """``n`` inputs drawn with replacement in a seeded order (the same for every trial)."""
        rng = random.Random(seed)
        if self.kind == "embed":
            return Workload("embed", texts=tuple(rng.choice(self.texts) for _ in range(n)), source=self.source)
        return Workload("rerank", rerank=tuple(rng.choice(self.rerank) for _ in range(n)), source=self.source)

    def body(self, i: int, batch: int) -> tuple[bytes, int]:
        """The ``i``-th request's JSON body and how many inputs it carries.

        Embed requests carry ``batch`` texts (the client batch size being tuned); a rerank request
        is one query with its documents, as the tenant sends it.
        """
        if self.kind == "embed":
            start = (i * batch) % len(self.texts)
            chunk = [self.texts[(start + k) % len(self.texts)] for k in range(batch)]
            return json.dumps({"inputs": chunk, "truncate": True}, ensure_ascii=False).encode(), batch
        item = self.rerank[i % len(self.rerank)]
        body = {"query": item.query, "texts": list(item.documents), "truncate": True}
        return json.dumps(body, ensure_ascii=False).encode(), len(item.documents)

    @property
    def path(self) -> str:
        return "/embed" if self.kind == "embed" else "/rerank"

    def describe(self) -> dict[str, object]:
        lengths = sorted(len(t) for t in self._all_texts())
        return {
            "kind": self.kind,
            "source": self.source,
            "inputs": len(self),
            "chars_p50": lengths[len(lengths) // 2],
            "chars_max": lengths[-1],
            "documents_per_query": self.documents_per_query,
        }

    def _all_texts(self) -> list[str]:
        if self.kind == "embed":
            return list(self.texts)
        return [t for item in self.rerank for t in (item.query, *item.documents)]


def load(path: str | Path, kind: Kind, *, documents_per_query: int = 8) -> Workload:
    """Read a JSONL (``.jsonl``/``.ndjson``) or plain-text sample of the tenant's traffic.

    Plain text for rerank: each line is a query followed by the next ``documents_per_query`` lines
    as its documents (use JSONL to give the real pairing).
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkloadError("no such file", where=str(p), fix="give a JSONL or plain-text sample") from None
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(p)) from None
    lines = [(n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        return _from_jsonl(p, lines, kind)
    if kind == "embed":
        return Workload("embed", texts=tuple(line for _, line in lines), source=str(p))
    texts = [line for _, line in lines]
    step = documents_per_query + 1
    items = tuple(
        RerankItem(texts[i], tuple(texts[i + 1:i + step])) for i in range(0, len(texts) - 1, step)
    )
    return Workload("rerank", rerank=items, source=str(p))


def _from_jsonl(p: Path, lines: list[tuple[int, str]], kind: Kind) -> Workload:
    texts: list[str] = []
    items: list[RerankItem] = []
    for n, line in lines:
        where = f"{p}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"not JSON ({exc.msg})", where=where, fix="one JSON object per line") from None
        if not isinstance(record, dict):
            raise WorkloadError("expected a JSON object", where=where)
        if kind == "embed":
            text = record.get("text")
            if not isinstance(text, str) or not text:
                raise WorkloadError('expected a non-empty "text" string', where=where,
                                    fix='write {"text": "..."} per line for an embed workload')
            texts.append(text)
            continue
        query, documents = record.get("query"), record.get("documents", record.get("texts"))
        if not isinstance(query, str) or not isinstance(documents, list) or not documents \
                or not all(isinstance(d, str) for d in documents):
            raise WorkloadError('expected "query" (a string) and "documents" (a non-empty list of strings)',
                                where=where, fix='write {"query": "...", "documents": ["...", ...]} per line')
        items.append(RerankItem(query, tuple(documents)))
    return Workload(kind, texts=tuple(texts), rerank=tuple(items), source=str(p))


@dataclass(frozen=True)
class LengthDistribution:
    """Input lengths in words (English) or 4-character chunks (Chinese): log-normal, clipped."""

    median: float = 24
    spread: float = 0.8  # sigma of log(length): 0.8 puts p90 near 2.8 x the median
    minimum: int = 1
    maximum: int = 400

    def draw(self, rng: random.Random) -> int:
        value = round(rng.lognormvariate(math.log(self.median), self.spread))
        return max(self.minimum, min(self.maximum, value))


def synthetic(kind: Kind, *, n: int = 512, lengths: LengthDistribution | None = None,
              languages: Sequence[str] = ("en",), documents_per_query: int = 8, seed: int = 0) -> Workload:
    """``n`` inputs (or rerank queries) with drawn lengths, languages chosen in turn (``en``, ``zh``)."""
    unknown = set(languages) - {"en", "zh"}
    if unknown or not languages:
        raise WorkloadError(f"unknown language(s) {sorted(unknown)}", fix="use en and/or zh")
    dist = lengths or LengthDistribution()
    rng = random.Random(seed)

    def text(i: int, words: int) -> str:
        if languages[i % len(languages)] == "zh":
            return "".join(rng.choice(_ZH_CHARS) for _ in range(words * _ZH_CHUNK)) + "。"
        return " ".join(rng.choice(_EN_WORDS) for _ in range(words)).capitalize() + "."

    source = f"synthetic(median={dist.median:g}, spread={dist.spread:g}, languages={','.join(languages)})"
    if kind == "embed":
        return Workload("embed", texts=tuple(text(i, dist.draw(rng)) for i in range(n)), source=source)
    query_len = LengthDistribution(median=max(2.0, dist.median / 4), spread=0.5, maximum=64)
    items = tuple(
        RerankItem(text(i, query_len.draw(rng)), tuple(text(i, dist.draw(rng)) for _ in range(documents_per_query)))
        for i in range(n)
    )
    return Workload("rerank", rerank=items, source=source)
