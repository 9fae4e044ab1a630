"""The gateway over real fallback workers: keys, isolation, model choice, OpenAI/Cohere shapes."""

from __future__ import annotations

import base64
import struct

import httpx
import pytest
from gw_harness import KEYS, Cluster
from gw_harness import GatewayThread, bearer
from prometheus_client import CollectorRegistry

from tei_manager.gateway.app import create_app

pytestmark = pytest.mark.slow  # real worker processes on loopback

FIN, HR, OPS = KEYS["finance"][0], KEYS["hr"][0], KEYS["ops"][0]


@pytest.fixture(scope="module")
def gw(cluster: Cluster):
    app = create_app(cluster.profile(), cluster.plan, keys=KEYS, registry=CollectorRegistry(), gpu_metrics=False)
    with GatewayThread(app) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client


def test_a_tenant_key_reaches_its_own_model(gw: httpx.Client) -> None:
    r = gw.post("/embed", json={"inputs": ["hello world", "bonjour"]}, headers=bearer(FIN))
    assert r.status_code == 200, r.text
    vectors = r.json()
    assert len(vectors) == 2 and len(vectors[0]) == 384  # all-MiniLM-L6-v2
    assert r.headers["x-tei-manager-instance"].startswith("finance-minilm-")
    assert int(r.headers["x-compute-tokens"]) > 0


def test_every_key_of_a_tenant_works(gw: httpx.Client) -> None:
    r = gw.post("/embed", json={"inputs": "x"}, headers=bearer(KEYS["finance"][1]))
    assert r.status_code == 200


def test_requests_spread_over_both_replicas(gw: httpx.Client) -> None:
    seen = {gw.post("/embed", json={"inputs": "spread"}, headers=bearer(FIN)).headers["x-tei-manager-instance"]
            for _ in range(6)}
    assert seen == {"finance-minilm-0", "finance-minilm-1"}


def test_missing_or_wrong_key_is_401_in_tei_shape(gw: httpx.Client) -> None:
    missing = gw.post("/embed", json={"inputs": "x"})
    assert missing.status_code == 401
    assert missing.json()["error_type"] == "Unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = gw.post("/embed", json={"inputs": "x"}, headers=bearer("fin-key-3"))
    assert wrong.status_code == 401
    assert "fin-key-3" not in wrong.text  # keys are never echoed


def test_a_tenant_cannot_reach_another_tenants_model(gw: httpx.Client) -> None:
    r = gw.post("/rerank", json={"query": "q", "texts": ["a"]}, headers={**bearer(FIN), "X-Model": "tiny-rr"})
    assert r.status_code == 403
    body = r.json()
    assert body["error_type"] == "Forbidden"
    assert "tiny-rr" in body["error"]
    # ... whichever way the model is named
    for name in ("test/tiny-reranker", "hr-tiny-rr"):
        r = gw.post(f"/rerank?model={name}", json={"query": "q", "texts": ["a"]}, headers=bearer(OPS))
        assert r.status_code == 403, name


def test_shared_deployments_are_open_to_every_tenant(gw: httpx.Client) -> None:
    # finance has no reranker of its own: its only choice is hr's shared MiniLM (bi-encoder rerank).
    r = gw.post("/rerank", json={"query": "cats", "texts": ["a cat sat", "stock prices"]}, headers=bearer(FIN))
    assert r.status_code == 200, r.text
    assert r.headers["x-tei-manager-instance"] == "shared-minilm"
    assert [item["index"] for item in r.json()] == [0, 1]
    # ops owns nothing, so its embed requests land on the shared deployment as well
    r = gw.post("/embed", json={"inputs": "x"}, headers=bearer(OPS))
    assert r.headers["x-tei-manager-instance"] == "shared-minilm"


def test_own_deployment_wins_over_a_shared_one(gw: httpx.Client) -> None:
    r = gw.post("/embed", json={"inputs": "x"}, headers=bearer(FIN))
    assert r.headers["x-tei-manager-instance"].startswith("finance-minilm")
    r = gw.post("/v1/embeddings", json={"model": "minilm", "input": "x"}, headers=bearer(FIN))
    assert r.headers["x-tei-manager-instance"].startswith("finance-minilm")


def test_ambiguous_choice_is_400_naming_the_choices(gw: httpx.Client) -> None:
    # hr owns two deployments that serve /rerank.
    r = gw.post("/rerank", json={"query": "q", "texts": ["a"]}, headers=bearer(HR))
    assert r.status_code == 400
    msg = r.json()["error"]
    assert "hr-tiny-rr" in msg and "shared-minilm" in msg and "X-Model" in msg
    ok = gw.post("/rerank", json={"query": "q", "texts": ["a"]}, headers={**bearer(HR), "X-Model": "tiny-rr"})
    assert ok.status_code == 200
    assert ok.headers["x-tei-manager-instance"] == "hr-tiny-rr"


def test_unknown_model_is_404_listing_the_tenants_models(gw: httpx.Client) -> None:
    r = gw.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}, headers=bearer(OPS))
    assert r.status_code == 404
    assert r.json()["error_type"] == "ModelNotFound"
    assert "minilm" in r.json()["error"]


def test_openai_embeddings_shape(gw: httpx.Client) -> None:
    r = gw.post("/v1/embeddings", json={"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["a", "b c"]},
                headers=bearer(FIN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 384
    assert body["usage"]["prompt_tokens"] > 0
    # The OpenAI SDK asks for base64 by default.
    r = gw.post("/v1/embeddings", json={"model": "minilm", "input": "a", "encoding_format": "base64"},
                headers=bearer(FIN))
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(struct.unpack(f"<{len(raw) // 4}f", raw)) == 384


def test_cohere_rerank_shape(gw: httpx.Client) -> None:
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "France's capital city is Paris."]
    r = gw.post(
        "/v1/rerank",
        json={"model": "minilm", "query": "What is the capital of France?", "documents": docs,
              "top_n": 2, "return_documents": True},
        headers=bearer(FIN),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert len(results) == 2
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert {res["index"] for res in results} == {0, 2}  # the two Paris sentences beat bananas
    assert all(res["document"]["text"] == docs[res["index"]] for res in results)
    assert body["usage"]["total_tokens"] > 0
    # Jina/Cohere object documents, no documents back by default
    r = gw.post("/v1/rerank", json={"query": "q", "documents": [{"text": "a"}, {"text": "b"}]},
                headers={**bearer(HR), "X-Model": "tiny-rr"})
    assert r.status_code == 200
    assert all("document" not in res for res in r.json()["results"])


def test_cohere_bad_body_is_422(gw: httpx.Client) -> None:
    r = gw.post("/v1/rerank", json={"model": "minilm", "query": "q", "documents": [1, 2]}, headers=bearer(FIN))
    assert r.status_code == 422
    assert r.json()["error_type"] == "Validation"


def test_tokenize_and_sparse_pass_through(gw: httpx.Client) -> None:
    r = gw.post("/tokenize", json={"inputs": "hello"}, headers=bearer(FIN))
    assert r.status_code == 200
    assert [t["text"] for t in r.json()[0] if not t["special"]] == ["hello"]
    # MiniLM has no sparse head: the worker's own TEI-style error comes back unchanged
    r = gw.post("/embed_sparse", json={"inputs": "hello"}, headers=bearer(FIN))
    assert r.status_code >= 400 and "error_type" in r.json()


def test_upstream_errors_and_bad_json_keep_tei_shape(gw: httpx.Client) -> None:
    r = gw.post("/embed", json={"inputs": []}, headers=bearer(FIN))
    assert r.status_code == 400 and r.json()["error_type"] == "Empty"
    r = gw.post("/embed", content=b"{not json", headers={**bearer(FIN), "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error_type"] == "Validation"
    r = gw.get("/nowhere")
    assert r.status_code == 404 and r.json()["error_type"] == "NotFound"


def test_models_list_shows_only_what_a_tenant_may_use(gw: httpx.Client) -> None:
    fin = {m["deployment"] for m in gw.get("/v1/models", headers=bearer(FIN)).json()["data"]}
    hr = {m["deployment"] for m in gw.get("/v1/models", headers=bearer(HR)).json()["data"]}
    assert fin == {"finance-minilm", "shared-minilm"}
    assert hr == {"hr-tiny-rr", "shared-minilm"}


def test_metrics_page(gw: httpx.Client) -> None:
    gw.post("/embed", json={"inputs": "count me"}, headers=bearer(FIN))
    text = gw.get("/metrics").text
    assert 'tei_manager_gateway_requests_total{' in text
    assert 'tenant="finance"' in text
    assert 'tei_manager_gateway_tokens_total{model="minilm",tenant="finance"}' in text
    assert 'tei_manager_gateway_instance_up{instance="finance-minilm-0",model="minilm",tenant="finance"} 1.0' in text
    assert 'reason="forbidden"' in text
    assert "fin-key" not in text


def test_openai_calls_above_the_client_batch_limit_are_split_and_merged(gw: httpx.Client) -> None:
    # LangChain's OpenAIEmbeddings sends up to 1000 inputs at once; the worker takes 32 per request.
    texts = [f"sentence number {i}" for i in range(70)]
    r = gw.post("/v1/embeddings", json={"model": "minilm", "input": texts}, headers=bearer(FIN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(70))
    single = gw.post("/v1/embeddings", json={"model": "minilm", "input": texts[65]}, headers=bearer(FIN)).json()
    assert body["data"][65]["embedding"] == pytest.approx(single["data"][0]["embedding"], abs=1e-5)
    assert body["usage"]["prompt_tokens"] == int(r.headers["x-compute-tokens"]) > 70


def test_cohere_rerank_of_many_documents_is_split_and_merged(gw: httpx.Client) -> None:
    docs = [f"bananas are yellow fruit number {i}" for i in range(45)]
    docs[40] = "Paris is the capital of France."
    r = gw.post("/v1/rerank", json={"model": "minilm", "query": "What is the capital of France?",
                                    "documents": docs, "top_n": 3}, headers=bearer(FIN))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and results[0]["index"] == 40
    everything = gw.post("/v1/rerank", json={"model": "minilm", "query": "q", "documents": docs},
                         headers=bearer(FIN)).json()["results"]
    assert sorted(x["index"] for x in everything) == list(range(45))
    scores = [x["relevance_score"] for x in everything]
    assert scores == sorted(scores, reverse=True)
