"""Cohere translation, chunking and token estimates (tei_manager.gateway.adapters is pure)."""

from __future__ import annotations

import json

import pytest

from tei_manager.gateway import adapters


def test_cohere_body_becomes_a_tei_rerank_body() -> None:
    tei, texts, top_n, docs = adapters.cohere_to_tei(
        {"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": True})
    assert tei == {"query": "q", "texts": ["a", "b"], "raw_scores": False, "return_text": False}
    assert (texts, top_n, docs) == (["a", "b"], 1, True)
    for bad in ({"query": 1, "documents": []}, {"query": "q", "documents": [3]}, {"query": "q", "documents": "a"},
                {"query": "q", "documents": ["a"], "top_n": 0}):
        with pytest.raises(adapters.BodyError):
            adapters.cohere_to_tei(bad)


def test_tei_ranking_becomes_cohere_results() -> None:
    tei = json.dumps([{"index": 1, "score": 0.9}, {"index": 0, "score": 0.2}]).encode()
    answer = adapters.tei_to_cohere(tei, ["a", "b"], 1, True, "org/m", 12)
    assert answer["results"] == [{"index": 1, "relevance_score": 0.9, "document": {"text": "b"}}]
    assert answer["usage"] == {"total_tokens": 12} and answer["model"] == "org/m"


def test_openai_chunks_merge_back_in_order() -> None:
    body = {"model": "m", "input": [f"t{i}" for i in range(5)], "encoding_format": "float"}
    chunks = adapters.split_openai(body, 2)
    assert chunks is not None and [json.loads(c)["input"] for c in chunks] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    answers = [json.dumps({"object": "list", "model": "m", "data": [
        {"object": "embedding", "index": i, "embedding": [float(n * 2 + i)]} for i in range(len(json.loads(c)["input"]))
    ], "usage": {"prompt_tokens": 3, "total_tokens": 3}}).encode() for n, c in enumerate(chunks)]
    merged = json.loads(adapters.merge_openai(answers, 2))
    assert [d["index"] for d in merged["data"]] == [0, 1, 2, 3, 4]
    assert [d["embedding"][0] for d in merged["data"]] == [0, 1, 2, 3, 4]
    assert merged["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert adapters.split_openai({"input": ["a", "b"]}, 2) is None
    assert adapters.split_openai({"input": [1, 2, 3]}, 2) is None  # token ids of one input


def test_rerank_chunks_merge_sorted_with_global_indices() -> None:
    chunks = adapters.split_rerank({"query": "q", "texts": ["a", "b", "c"]}, 2)
    assert chunks is not None and len(chunks) == 2
    merged = json.loads(adapters.merge_rerank([
        json.dumps([{"index": 1, "score": 0.5}, {"index": 0, "score": 0.1}]).encode(),
        json.dumps([{"index": 0, "score": 0.7}]).encode(),
    ], 2))
    assert merged == [{"index": 2, "score": 0.7}, {"index": 1, "score": 0.5}, {"index": 0, "score": 0.1}]


def test_token_estimates() -> None:
    assert adapters.estimate_tokens("embed", {"inputs": "abcdefgh"}) == 4
    assert adapters.estimate_tokens("embed", {"input": [[1, 2, 3], "abcd"]}) == 3 + 3
    assert adapters.estimate_tokens("rerank", {"query": "abcd", "texts": ["abcd", "abcd"]}) == 2 * (3 + 3)
    assert adapters.estimate_tokens("embed", {}) == 1


def test_tei_embed_and_rerank_calls_split_by_input_and_count_permits() -> None:
    parts = adapters.split_inputs("/embed", {"inputs": ["a", "b", "c"], "normalize": True}, 2)
    assert parts is not None
    assert [(json.loads(b)["inputs"], n) for b, n in parts] == [(["a", "b"], 2), (["c"], 1)]
    assert json.loads(parts[0][0])["normalize"] is True
    ranked = adapters.split_inputs("/rerank", {"query": "q", "texts": ["a", "b", "c"]}, 2)
    assert ranked is not None and [n for _, n in ranked] == [3, 2]  # + the query a bi-encoder embeds
    assert adapters.split_inputs("/embed", {"inputs": [[1, 2], [3]]}, 1) is not None  # token-id inputs
    assert adapters.split_inputs("/embed", {"inputs": [1, 2, 3]}, 1) is None  # one input as ids


def test_inputs_of_a_shape_tei_does_not_take_are_422() -> None:
    with pytest.raises(adapters.BodyError) as deep:
        adapters.count_inputs("/embed", {"inputs": [[["x"]]]})
    assert deep.value.status == 422 and "inputs[0]" in deep.value.message


def test_embed_answers_merge_into_one_array() -> None:
    merged = adapters.merge_arrays([b"[[1.0,2.0],[3.0]]", b" [ [4.5] ] ", b"[]"], 2)
    assert json.loads(merged) == [[1.0, 2.0], [3.0], [4.5]]


def test_uvicorn_warnings_are_rate_limited() -> None:
    import logging

    from tei_manager.gateway.server import OncePerInterval

    limiter = OncePerInterval(60)
    records = [logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, "Invalid HTTP request received.", None,
                                 None) for _ in range(100)]
    assert sum(limiter.filter(r) for r in records) == 1
