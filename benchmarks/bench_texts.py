"""Deterministic benchmark texts: the same bytes on every run and host."""

from __future__ import annotations

import random

WORDS = [
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his",
    "her", "an", "were", "are", "which", "this", "be", "or", "has", "had", "not", "but", "what", "all", "when",
    "there", "can", "more", "if", "no", "out", "so", "said", "up", "its", "about", "into", "than", "them", "only",
    "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first", "any", "my", "now",
    "such", "like", "our", "over", "man", "me", "even", "most", "made", "after", "also", "did", "many", "before",
    "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each",
    "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world", "still", "own",
    "see", "men", "work", "long", "get", "here", "between", "both", "life", "being", "under", "never", "day",
    "same", "another", "know", "while", "last", "might", "us", "great", "old", "year",
]


def rag_texts(count: int, *, low: int = 8, high: int = 64, seed: int = 12345) -> list[str]:
    """`count` sentences of `low` to `high` words, uniformly: passages and queries of a RAG application."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "." for _ in range(count)]


def corpus(n: int = 512) -> list[str]:
    """The older harness's corpus: 4 to 27 words, and a quarter of 4 to 123 words (a long tail)."""
    out, seed = [], 12345
    for i in range(n):
        seed = (seed * 1103515245 + 12345) % 2**31
        length = 4 + (seed % 24 if i % 4 else seed % 120)
        sent = []
        for _ in range(length):
            seed = (seed * 1103515245 + 12345) % 2**31
            sent.append(WORDS[seed % len(WORDS)])
        out.append(" ".join(sent).capitalize() + ".")
    return out
