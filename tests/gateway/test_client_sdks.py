"""Off-the-shelf client libraries talk to the gateway unchanged (skipped where they are not installed)."""

from __future__ import annotations

import pytest
from gw_harness import KEYS, Cluster
from gw_harness import GatewayThread
from prometheus_client import CollectorRegistry

from tei_manager.gateway.app import create_app

pytestmark = pytest.mark.slow  # real worker processes on loopback


@pytest.fixture(scope="module")
def gateway_url(cluster: Cluster):
    app = create_app(cluster.profile(), cluster.plan, keys=KEYS, registry=CollectorRegistry(), gpu_metrics=False)
    with GatewayThread(app) as server:
        yield server.url


def test_openai_sdk_embeddings(gateway_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=KEYS["finance"][0])
    # The SDK asks for base64 and decodes it itself.
    result = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=["hello", "world"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway_url + "/v1", api_key="nope").embeddings.create(model="minilm", input="x")
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=gateway_url + "/v1", api_key=KEYS["ops"][0]).embeddings.create(
            model="finance-minilm", input="x")
    listed = {m.id for m in client.models.list()}
    assert listed == {"minilm"}


def test_cohere_sdk_rerank(gateway_url: str) -> None:
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key=KEYS["finance"][0], base_url=gateway_url)
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "The capital of France is Paris."]
    response = client.rerank(model="minilm", query="What is the capital of France?", documents=docs, top_n=2,
                             return_documents=True)
    assert {r.index for r in response.results} == {0, 2}
    assert response.results[0].relevance_score >= response.results[1].relevance_score
    assert response.results[0].document.text == docs[response.results[0].index]
