"""Done-means for real client batch sizes: LangChain, the OpenAI SDK and Cohere's ClientV2 against
the quickstart profile (profiles/quickstart.yaml, ports moved to free ones) behind the gateway.

The quickstart's instances take 64 inputs at once (`max_concurrent_requests: 64`) and 16 per
request (`max_client_batch_size: 16`); these clients send 1000, 300 and 100 inputs in one call.
The gateway must split them and pace the parts within the 64 permits: every call succeeds, none
meets a 429.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gw_harness import (
    GatewayThread,
    WorkerProcess,
    bearer,
    free_port_block,
    plan_for,
    start_workers,
)
from prometheus_client import CollectorRegistry

from tei_manager.core.models import Profile
from tei_manager.gateway.app import create_app
from tei_manager.profiles import load_profile

pytestmark = pytest.mark.slow  # real worker processes on loopback

REPO = Path(__file__).resolve().parents[2]
KEY = "demo-key"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def quickstart(**tenant_overrides: Any) -> Profile:
    data = load_profile(REPO / "profiles" / "quickstart.yaml").model_dump(mode="json", exclude_unset=True)
    base = free_port_block(2)
    for n, dep in enumerate(data["deployments"]):
        dep["port"] = base + n
    data["tenants"]["demo"].update(tenant_overrides)
    return Profile.model_validate(data)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, WorkerProcess]]]:
    # Waits are bounded by the tenant's max_wait_ms; 60 s so a slow shared CI machine queues
    # the concurrent calls below instead of timing them out.
    profile = quickstart(quota={"max_wait_ms": 60000})
    plan = plan_for(profile)
    workers = start_workers(plan, tmp_path_factory.mktemp("quickstart-logs"))
    app = create_app(profile, plan, keys={"demo": [KEY]}, registry=CollectorRegistry(), gpu_metrics=False,
                     follow_supervisor=False)
    try:
        with GatewayThread(app) as server:
            yield server.url, workers
    finally:
        for worker in workers.values():
            worker.stop()


def _texts(n: int) -> list[str]:
    return [f"document number {i} about topic {i % 7}" for i in range(n)]


def _same(a: list[float], b: list[float]) -> bool:
    return math.isclose(sum(x * y for x, y in zip(a, b)), 1.0, abs_tol=1e-4)


def test_langchain_embed_documents_with_1000_texts(deployment: tuple[str, Any]) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    url, _ = deployment
    # check_embedding_ctx_length=False: otherwise LangChain tokenizes with tiktoken (OpenAI's
    # vocabulary, downloaded on first use) and sends OpenAI token ids, which mean nothing to a
    # MiniLM vocabulary; every non-OpenAI OpenAI-compatible server needs this setting.
    client = langchain_openai.OpenAIEmbeddings(
        model=MODEL, base_url=url + "/v1", api_key=KEY, check_embedding_ctx_length=False
    )
    texts = _texts(1000)
    vectors = client.embed_documents(texts)  # one request of 1000 inputs (LangChain's default chunk)
    assert len(vectors) == 1000 and all(len(v) == 384 for v in vectors)
    # Order survives the split: input 777 comes back as 777.
    assert _same(vectors[777], client.embed_query(texts[777]))


def test_openai_sdk_with_300_inputs(deployment: tuple[str, Any]) -> None:
    openai = pytest.importorskip("openai")
    url, _ = deployment
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    texts = _texts(300)
    result = client.embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in result.data] == list(range(300))
    single = client.embeddings.create(model=MODEL, input=texts[299]).data[0].embedding
    assert _same(result.data[299].embedding, single)
    assert result.usage.prompt_tokens > 300


def test_cohere_client_v2_rerank_with_100_documents(deployment: tuple[str, Any]) -> None:
    cohere = pytest.importorskip("cohere")
    url, _ = deployment
    client = cohere.ClientV2(api_key=KEY, base_url=url)
    docs = [f"Bananas are fruit number {i}." for i in range(99)] + ["Paris is the capital of France."]
    response = client.rerank(model="minilm", query="What is the capital of France?", documents=docs, top_n=3)
    assert len(response.results) == 3
    assert response.results[0].index == 99  # the index is global, not within a chunk


def test_concurrent_16_input_requests_queue_in_the_gateway_instead_of_429(deployment: tuple[str, Any]) -> None:
    url, _ = deployment
    texts = _texts(16)

    def call(n: int) -> int:
        return httpx.post(url + "/embed", json={"inputs": texts}, headers=bearer(KEY), timeout=120).status_code

    # 24 x 16 = 384 inputs at once against 64 permits: six times what the instance admits.
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(call, range(24)))
    assert statuses == [200] * 24


def test_tei_embed_above_the_client_batch_limit_is_split(deployment: tuple[str, Any]) -> None:
    url, _ = deployment
    texts = _texts(40)  # max_client_batch_size is 16: the instance alone would answer 413
    response = httpx.post(url + "/embed", json={"inputs": texts}, headers=bearer(KEY), timeout=120)
    assert response.status_code == 200
    vectors = response.json()
    assert len(vectors) == 40
    single = httpx.post(url + "/embed", json={"inputs": texts[39]}, headers=bearer(KEY), timeout=60).json()[0]
    assert _same(vectors[39], single)


def test_a_request_over_the_input_cap_gets_413_naming_the_setting(deployment: tuple[str, Any]) -> None:
    url, _ = deployment
    response = httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": ["x"] * 2049},
                          headers=bearer(KEY), timeout=60)
    assert response.status_code == 413
    body = response.json()
    assert body["error_type"] == "Validation"
    assert "2048" in body["error"] and "gateway.max_request_inputs" in body["error"]
