"""Where TEI 1.9.3's source decides a detail, the worker follows it (each test names the place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def test_equal_rerank_scores_come_out_highest_index_first(reranker: Any) -> None:
    # router/src/http/server.rs (rerank): ranks.sort_by(partial_cmp) then ranks.reverse().
    texts = ["same text", "a different one entirely", "same text", "same text"]
    ranks = reranker.post("/rerank", json={"query": "q", "texts": texts}).json()
    tied = [r["index"] for r in ranks if r["index"] != 1]
    assert tied == [3, 2, 0]
    scores = [r["score"] for r in ranks]
    assert scores == sorted(scores, reverse=True)


def test_bi_encoder_rerank_ties_follow_the_same_rule(make_client: Any, embedder_engine: Any) -> None:
    client = make_client(embedder_engine, rerank_mode="bi-encoder")
    ranks = client.post("/rerank", json={"query": "q", "texts": ["x y", "x y"]}).json()
    assert [r["index"] for r in ranks] == [1, 0]


def test_token_ids_are_decoded_and_encoded_again(embedder: Any) -> None:
    # core/src/tokenization.rs (tokenize_input, EncodingInput::Ids): decode(ids, false), then
    # encode(text, add_special_tokens=false); the decoder drops ids it does not know.
    ids = [t["id"] for t in embedder.post("/tokenize", json={"inputs": "the cat reads"}).json()[0]]
    as_text = np.array(embedder.post("/embed", json={"inputs": "the cat reads"}).json())
    as_ids = np.array(embedder.post("/embed", json={"inputs": [ids]}).json())
    with_unknown = embedder.post("/embed", json={"inputs": [[*ids, 999_999]]})
    assert with_unknown.status_code == 200
    assert np.allclose(as_text, as_ids, atol=1e-5)
    assert np.allclose(as_ids, np.array(with_unknown.json()), atol=1e-5)


def test_the_character_cut_before_tokenizing_changes_what_left_truncation_keeps(embedder: Any, embedder_engine: Any) -> None:
    # core/src/tokenization.rs: over max_input_length * 250 characters, with truncation on, the
    # text is cut to that many bytes first; Left truncation then keeps the end of the cut text.
    limit = embedder_engine.spec.max_input_length * 250
    head = ("alpha beta gamma " * (limit // 17 + 1))[:limit]
    text = head + " zeta eta theta" * 50
    body = lambda inputs: {"inputs": inputs, "truncation_direction": "Left"}
    long = np.array(embedder.post("/embed", json=body(text)).json())
    cut = np.array(embedder.post("/embed", json=body(head)).json())
    tail = np.array(embedder.post("/embed", json=body(text[-2000:])).json())
    assert np.allclose(long, cut, atol=1e-5)
    assert not np.allclose(long, tail, atol=1e-3)
    # Without truncation, the same text is refused with TEI's message.
    r = embedder.post("/embed", json={"inputs": text, "truncate": False})
    assert r.status_code == 422
    assert r.json()["error"] == f"Input validation error: `inputs` must have less than {limit} characters. Given: {len(text)}"


def test_model_type_errors_have_tei_capitals(embedder: Any, reranker: Any) -> None:
    # core/src/infer.rs: "Model is not an embedding model" / "Model is not a classifier model";
    # router/src/http/server.rs keeps "model is not a re-ranker model" in lower case.
    r = reranker.post("/embed", json={"inputs": "a"})
    assert (r.status_code, r.json()) == (424, {"error": "Backend error: Model is not an embedding model", "error_type": "Backend"})
    r = embedder.post("/predict", json={"inputs": "a"})
    assert r.json()["error"] == "Backend error: Model is not a classifier model"
    r = embedder.post("/rerank", json={"query": "q", "texts": ["a"]})
    assert r.json()["error"] == "Backend error: model is not a re-ranker model"


def test_info_shows_no_host_path(make_client: Any, embedder_engine: Any, tiny_embedder_dir: Path) -> None:
    info = make_client(embedder_engine, model_id=str(tiny_embedder_dir)).get("/info").json()
    assert info["model_id"] == tiny_embedder_dir.name
    assert info["served_model_name"] == tiny_embedder_dir.name
    assert str(tiny_embedder_dir.parent) not in str(info)
    openai = make_client(embedder_engine, model_id=str(tiny_embedder_dir)).post("/v1/embeddings", json={"input": "a"})
    assert openai.json()["model"] == tiny_embedder_dir.name
    # The TEI release whose API this worker follows, as TEI reports its own version.
    assert info["version"] == info["fallback_worker"]["tei_api_version"] == "1.9.3"
    hub = make_client(embedder_engine, model_id="BAAI/bge-m3", served_model_name="m3").get("/info").json()
    assert (hub["model_id"], hub["served_model_name"]) == ("BAAI/bge-m3", "m3")
