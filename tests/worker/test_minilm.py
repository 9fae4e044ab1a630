"""The packaged real model (all-MiniLM-L6-v2): same vectors as sentence-transformers, sensible ranking."""

from __future__ import annotations

import numpy as np
import pytest

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums. " * 30,  # long: exercises truncation at max_seq_length 256 and padding
]


@pytest.fixture(scope="module")
def reference(minilm_dir) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_embeddings_match_sentence_transformers(make_client, minilm_engine, reference) -> None:
    client = make_client(minilm_engine, model_id="sentence-transformers/all-MiniLM-L6-v2")
    r = client.post("/embed", json={"inputs": SENTENCES})
    assert r.status_code == 200
    ours = np.array(r.json())
    assert ours.shape == (len(SENTENCES), 384)
    assert _cosines(ours, reference).min() >= 0.9999
    info = client.get("/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["max_input_length"] == 256


def test_related_sentences_score_above_unrelated(make_client, minilm_engine) -> None:
    client = make_client(minilm_engine, rerank_mode="bi-encoder")
    sims = client.post(
        "/similarity", json={"inputs": {"source_sentence": SENTENCES[0], "sentences": SENTENCES[1:4]}}
    ).json()
    assert sims[0] > sims[1] and sims[0] > sims[2]
    ranked = client.post("/rerank", json={"query": "Someone eats bread", "texts": SENTENCES[:4]}).json()
    assert ranked[0]["index"] in (0, 1) and ranked[1]["index"] in (0, 1)


def test_bfloat16_stays_close_to_float32(minilm_dir, minilm_engine) -> None:
    from fallback_worker.engine import Engine
    from fallback_worker.tokenization import Encoded

    bf16 = Engine.load(str(minilm_dir), dtype="bfloat16", device="cpu")
    encoded: list[Encoded] = minilm_engine.tokenizer.encode(SENTENCES, truncate=True)
    assert _cosines(bf16.embed(encoded), minilm_engine.embed(encoded)).min() >= 0.995
