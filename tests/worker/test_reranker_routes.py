"""Route round trips on the tiny bge-reranker-v2-m3 shaped cross-encoder."""

from __future__ import annotations

import math

import pytest
from tei_schema import validate

TEXTS = ["the cat reads a book at home.", "a dog builds the bridge.", "the river", "our server answers the question."]


def test_rerank_sorted_sigmoid_scores(reranker) -> None:
    r = reranker.post("/rerank", json={"query": "what does the cat read?", "texts": TEXTS})
    assert r.status_code == 200
    body = r.json()
    validate(body, "RerankResponse")
    assert sorted(b["index"] for b in body) == [0, 1, 2, 3]
    scores = [b["score"] for b in body]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert all("text" not in b for b in body)


def test_raw_scores_are_the_logits_behind_the_sigmoid(reranker) -> None:
    probs = {b["index"]: b["score"] for b in reranker.post("/rerank", json={"query": "q", "texts": TEXTS}).json()}
    raw = {b["index"]: b["score"] for b in reranker.post("/rerank", json={"query": "q", "texts": TEXTS, "raw_scores": True}).json()}
    for i in range(len(TEXTS)):
        assert probs[i] == pytest.approx(1 / (1 + math.exp(-raw[i])), abs=1e-6)


def test_return_text(reranker) -> None:
    body = reranker.post("/rerank", json={"query": "q", "texts": TEXTS, "return_text": True}).json()
    assert all(b["text"] == TEXTS[b["index"]] for b in body)


def test_each_pair_is_scored_on_its_own(reranker) -> None:
    together = {b["index"]: b["score"] for b in reranker.post("/rerank", json={"query": "q", "texts": TEXTS}).json()}
    alone = reranker.post("/rerank", json={"query": "q", "texts": [TEXTS[2]]}).json()[0]["score"]
    assert alone == pytest.approx(together[2], abs=1e-5)


def test_predict_single_pair_and_batch(reranker) -> None:
    single = reranker.post("/predict", json={"inputs": "the cat"})
    assert single.status_code == 200
    validate(single.json(), "PredictResponse")
    assert single.json()[0]["label"] == "LABEL_0" and 0 < single.json()[0]["score"] < 1
    pair = reranker.post("/predict", json={"inputs": ["q", TEXTS[2]]}).json()
    rank = {b["index"]: b["score"] for b in reranker.post("/rerank", json={"query": "q", "texts": TEXTS}).json()}
    assert pair[0]["score"] == pytest.approx(rank[2], abs=1e-5), "a /predict pair is a /rerank pair"
    batch = reranker.post("/predict", json={"inputs": [["the cat"], ["q", TEXTS[2]]]})
    validate(batch.json(), "PredictResponse")
    assert len(batch.json()) == 2 and isinstance(batch.json()[0], list)


def test_reranker_info_and_refusals(reranker) -> None:
    info = reranker.get("/info").json()
    validate(info, "Info")
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    assert info["max_input_length"] == 128, "max_position_embeddings 130 minus XLM-R's offset of 2"
    r = reranker.post("/embed", json={"inputs": "x"})
    assert r.status_code == 424 and r.json()["error_type"] == "Backend"


def test_default_route_follows_the_model_type(reranker) -> None:
    r = reranker.post("/", json={"query": "q", "texts": TEXTS[:2]})
    assert r.status_code == 200
    validate(r.json(), "RerankResponse")
