"""Route round trips on the tiny bge-m3 shaped embedder, every body checked against TEI's schema."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from tei_schema import validate

SENTENCES = ["the cat reads a book at home.", "a dog builds the bridge in Paris.", "the model ranks the list today."]


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embed_returns_one_unit_vector_per_input_with_tei_headers(embedder) -> None:
    r = embedder.post("/embed", json={"inputs": SENTENCES})
    assert r.status_code == 200
    body = r.json()
    validate(body, "EmbedResponse")
    assert len(body) == 3 and all(len(v) == 32 for v in body)
    assert all(abs(_norm(v) - 1.0) < 1e-5 for v in body)
    assert body[0] != body[1]
    for header in ("x-compute-type", "x-compute-time", "x-compute-characters", "x-compute-tokens", "x-total-time",
                   "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert header in r.headers
    assert int(r.headers["x-compute-characters"]) == sum(len(s) for s in SENTENCES)


def test_single_string_still_gets_a_list_of_lists(embedder) -> None:
    body = embedder.post("/embed", json={"inputs": SENTENCES[0]}).json()
    batch = embedder.post("/embed", json={"inputs": SENTENCES}).json()
    assert len(body) == 1
    assert np.allclose(body[0], batch[0], atol=1e-5), "batching (and padding) must not change an embedding"


def test_normalize_false_and_dimensions(embedder) -> None:
    raw = embedder.post("/embed", json={"inputs": SENTENCES[0], "normalize": False}).json()[0]
    assert abs(_norm(raw) - 1.0) > 1e-3
    short = embedder.post("/embed", json={"inputs": SENTENCES[0], "dimensions": 8}).json()[0]
    assert len(short) == 8 and abs(_norm(short) - 1.0) < 1e-5
    # Matryoshka order: truncate the raw vector first, then normalize.
    expected = np.array(raw[:8]) / np.linalg.norm(raw[:8])
    assert np.allclose(short, expected, atol=1e-5)


def test_prompt_name_prepends_the_models_prompt(embedder) -> None:
    with_prompt = embedder.post("/embed", json={"inputs": "the cat", "prompt_name": "query"}).json()
    literal = embedder.post("/embed", json={"inputs": "query: the cat"}).json()
    plain = embedder.post("/embed", json={"inputs": "the cat"}).json()
    assert np.allclose(with_prompt, literal, atol=1e-6)
    assert not np.allclose(with_prompt, plain, atol=1e-3)
    r = embedder.post("/embed", json={"inputs": "the cat", "prompt_name": "nope"})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"


def test_token_ids_are_accepted_as_input(embedder) -> None:
    ids = [t["id"] for t in embedder.post("/tokenize", json={"inputs": SENTENCES[0]}).json()[0]]
    from_ids = embedder.post("/embed", json={"inputs": [ids]}).json()
    from_text = embedder.post("/embed", json={"inputs": SENTENCES[0]}).json()
    assert np.allclose(from_ids, from_text, atol=1e-5)


def test_long_input_is_truncated_or_rejected(embedder) -> None:
    long_text = " ".join(SENTENCES * 10)  # far over the 64-token limit
    ok = embedder.post("/embed", json={"inputs": long_text})
    assert ok.status_code == 200
    assert int(ok.headers["x-compute-tokens"]) == 64
    left = embedder.post("/embed", json={"inputs": long_text, "truncation_direction": "Left"}).json()
    # The kept tokens, re-sent as ids with the special tokens around them, must give the same vectors.
    tokens = embedder.post("/tokenize", json={"inputs": long_text}).json()[0]
    bos, body_ids, eos = tokens[0]["id"], [t["id"] for t in tokens[1:-1]], tokens[-1]["id"]
    first = embedder.post("/embed", json={"inputs": [[bos, *body_ids[:62], eos]]}).json()
    last = embedder.post("/embed", json={"inputs": [[bos, *body_ids[-62:], eos]]}).json()
    assert np.allclose(ok.json(), first, atol=1e-5)
    assert np.allclose(left, last, atol=1e-5)
    r = embedder.post("/embed", json={"inputs": long_text, "truncate": False})
    assert r.status_code == 422
    assert r.json()["error"].startswith("Input validation error: `inputs` must have less than 64 tokens. Given: ")
    validate(r.json(), "ErrorResponse")


def test_embed_sparse_uses_the_bge_m3_head(embedder) -> None:
    r = embedder.post("/embed_sparse", json={"inputs": ["the cat reads", "the cat reads the cat"]})
    assert r.status_code == 200
    body = r.json()
    validate(body, "EmbedSparseResponse")
    tokens = embedder.post("/tokenize", json={"inputs": "the cat reads"}).json()[0]
    words = {t["id"] for t in tokens if not t["special"]}
    specials = {t["id"] for t in tokens if t["special"]}
    first = {e["index"] for e in body[0]}
    assert first and first <= words, "one weight per distinct word piece, special tokens dropped"
    assert not first & specials
    assert all(e["value"] > 0 for e in body[0])
    indices = [e["index"] for e in body[1]]
    assert len(indices) == len(set(indices)), "repeated tokens are max-pooled into one entry"


def test_openai_route_float_and_base64(embedder) -> None:
    flt = embedder.post("/v1/embeddings", json={"input": SENTENCES[:2], "model": "tiny"})
    assert flt.status_code == 200
    validate(flt.json(), "OpenAICompatResponse")
    b64 = embedder.post("/embeddings", json={"input": SENTENCES[:2], "encoding_format": "base64"}).json()
    assert flt.json()["model"] == "tiny" and flt.json()["usage"]["prompt_tokens"] > 0
    for f, b in zip(flt.json()["data"], b64["data"]):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.allclose(decoded, f["embedding"], atol=1e-6)
    native = embedder.post("/embed", json={"inputs": SENTENCES[:2]}).json()
    assert np.allclose([d["embedding"] for d in flt.json()["data"]], native, atol=1e-6)


def test_similarity(embedder) -> None:
    r = embedder.post("/similarity", json={"inputs": {"source_sentence": SENTENCES[0], "sentences": SENTENCES}})
    assert r.status_code == 200
    validate(r.json(), "SimilarityResponse")
    assert len(r.json()) == 3 and r.json()[0] == pytest.approx(1.0, abs=1e-5)


def test_tokenize_and_decode_round_trip(embedder) -> None:
    text = "the cat reads a book"
    r = embedder.post("/tokenize", json={"inputs": [text, "a dog"]})
    assert r.status_code == 200
    validate(r.json(), "TokenizeResponse")
    tokens = r.json()[0]
    assert tokens[0]["special"] and tokens[0]["start"] is None and tokens[-1]["special"]
    assert [t["text"] for t in tokens[1:-1]] == [text[t["start"]:t["stop"]] for t in tokens[1:-1]]
    no_specials = embedder.post("/tokenize", json={"inputs": text, "add_special_tokens": False}).json()[0]
    assert len(no_specials) == len(tokens) - 2
    ids = [t["id"] for t in tokens]
    decoded = embedder.post("/decode", json={"ids": ids})
    validate(decoded.json(), "DecodeResponse")
    assert decoded.json() == [text]
    assert embedder.post("/decode", json={"ids": [ids, ids], "skip_special_tokens": False}).json()[0].startswith("<s>")


def test_utf8_tokenize_offsets_are_bytes_like_tei(embedder) -> None:
    text = "café cat"
    tokens = embedder.post("/tokenize", json={"inputs": text, "add_special_tokens": False}).json()[0]
    raw = text.encode()
    assert tokens[-1]["stop"] == len(raw)
    assert raw[tokens[-1]["start"]:tokens[-1]["stop"]].decode() == tokens[-1]["text"]


def test_info_health_metrics(embedder) -> None:
    info = embedder.get("/info").json()
    validate(info, "Info")
    assert info["model_type"] == {"embedding": {"pooling": "cls"}}
    assert info["max_input_length"] == 64 and info["model_dtype"] == "float32"
    assert info["fallback_worker"]["sparse_embeddings"] is True
    assert info["max_batch_requests"] == 16, "the CPU batch cap in use is reported, as TEI reports its overrides"
    health = embedder.get("/health")
    assert health.status_code == 200 and health.content == b""
    embedder.post("/embed", json={"inputs": ["a", "b"]})
    text = embedder.get("/metrics").text
    assert 'te_request_success{method="batch"} 1' in text
    assert "te_embed_success 2" in text
    assert "te_request_count_total" not in text, "TEI's counters have no _total suffix"
    for name in ("te_queue_size", "te_request_duration_bucket", "te_embed_inference_duration_count", "te_batch_next_size"):
        assert name in text


def test_docs_and_spec_are_served(embedder) -> None:
    assert embedder.get("/docs").status_code == 200
    spec = embedder.get("/api-doc/openapi.json").json()
    assert "/embed" in spec["paths"]


def test_embedding_model_refuses_rerank_like_tei(embedder) -> None:
    r = embedder.post("/rerank", json={"query": "cat", "texts": ["a", "b"]})
    assert r.status_code == 424
    assert r.json() == {"error": "Backend error: model is not a re-ranker model", "error_type": "Backend"}


def test_bi_encoder_rerank_mode(make_client, embedder_engine) -> None:
    client = make_client(embedder_engine, rerank_mode="bi-encoder")
    texts = ["a dog builds the bridge", "the cat reads a book", "the river"]
    r = client.post("/rerank", json={"query": "the cat reads a book", "texts": texts, "return_text": True})
    assert r.status_code == 200
    body = r.json()
    validate(body, "RerankResponse")
    assert body[0] == {"index": 1, "score": pytest.approx(1.0, abs=1e-5), "text": texts[1]}
    assert [b["score"] for b in body] == sorted((b["score"] for b in body), reverse=True)
    assert client.get("/info").json()["fallback_worker"]["rerank_mode"] == "bi-encoder"
