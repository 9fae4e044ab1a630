"""Every error case from tei-api.md: TEI's status code and body, never a stack trace."""

from __future__ import annotations

import pytest
from tei_schema import validate

LONG = "the cat reads a book. " * 40

# (route, body, status, error_type, message or None to only check the type)
JSON_ERRORS = [
    ("/embed", {"inputs": []}, 400, "Empty", "`inputs` cannot be empty"),
    ("/embed", {"inputs": ""}, 400, "Empty", "Input validation error: `inputs` cannot be empty"),
    ("/embed", {"inputs": ["a"] * 33}, 422, "Validation", "batch size 33 > maximum allowed batch size 32"),
    ("/embed", {"inputs": "a", "dimensions": 0}, 422, "Validation", "Input validation error: `dimensions` should be positive"),
    ("/embed", {"inputs": "a", "dimensions": 33}, 422, "Validation",
     "Input validation error: `dimensions` should be smaller than the maximum embedding dimension."),
    ("/embed", {"inputs": LONG, "truncate": False}, 422, "Validation", None),
    ("/embed", {"inputs": "a", "prompt_name": "missing"}, 422, "Validation", None),
    # Unknown ids are dropped when TEI decodes client ids; none left is an empty input.
    ("/embed", {"inputs": [[999999]]}, 400, "Empty", "Input validation error: `inputs` cannot be empty"),
    ("/rerank", {"query": "q", "texts": ["a"]}, 424, "Backend", "Backend error: model is not a re-ranker model"),
    ("/predict", {"inputs": "a"}, 424, "Backend", None),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"] * 32}}, 422, "Validation",
     "batch size 33 > maximum allowed batch size 32"),
    ("/tokenize", {"inputs": []}, 400, "Empty", None),
    ("/decode", {"ids": [[1]] * 33}, 422, "Validation", None),
]


@pytest.mark.parametrize(("route", "body", "status", "error_type", "message"), JSON_ERRORS)
def test_json_errors(embedder, route, body, status, error_type, message) -> None:
    r = embedder.post(route, json=body)
    assert r.status_code == status
    validate(r.json(), "ErrorResponse")
    assert r.json()["error_type"] == error_type
    if message is not None:
        assert r.json()["error"] == message


def test_reranker_errors(reranker) -> None:
    r = reranker.post("/rerank", json={"query": "q", "texts": []})
    assert (r.status_code, r.json()) == (400, {"error": "`texts` cannot be empty", "error_type": "Empty"})
    r = reranker.post("/rerank", json={"query": "q", "texts": ["a"] * 33})
    assert r.status_code == 422 and r.json()["error"] == "batch size 33 > maximum allowed batch size 32"


def test_openai_route_errors_use_openai_shape(embedder) -> None:
    r = embedder.post("/v1/embeddings", json={"input": []})
    assert r.status_code == 400
    assert r.json() == {"message": "`inputs` cannot be empty", "code": 400, "type": "Empty"}
    # TEI serializes the field `error_type` as "type" (serde rename); its OpenAPI file shows the Rust name.
    body = r.json()
    validate({"message": body["message"], "code": body["code"], "error_type": body["type"]}, "OpenAICompatErrorResponse")


@pytest.mark.parametrize(
    ("content", "ctype", "status"),
    [
        (b'{"inputs": ', "application/json", 400),  # malformed JSON
        (b'{"inputs": "a"}', "text/plain", 415),  # wrong content type
        (b'{"inputs": "a"}', None, 415),  # no content type
        (b'{"inputs": 5}', "application/json", 422),  # wrong shape
        (b'{"texts": ["a"]}', "application/json", 422),  # missing field
        (b'{"inputs": "a", "normalize": "yes"}', "application/json", 422),
        (b'{"inputs": "a", "truncation_direction": "Up"}', "application/json", 422),
        (b'["a"]', "application/json", 422),
    ],
)
def test_body_errors_are_plain_text_like_axum(embedder, content, ctype, status) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = embedder.post("/embed", content=content, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/plain")
    assert "Traceback" not in r.text and r.text


def test_payload_over_the_limit_is_413(make_client, embedder_engine) -> None:
    client = make_client(embedder_engine, payload_limit=1000)
    r = client.post("/embed", json={"inputs": "x" * 2000})
    assert r.status_code == 413 and r.headers["content-type"].startswith("text/plain")
    assert client.post("/embed", json={"inputs": "x" * 100}).status_code == 200


def test_api_key(make_client, embedder_engine) -> None:
    client = make_client(embedder_engine, api_key="s3cret")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
        r = client.post("/embed", json={"inputs": "a"}, headers=headers)
        assert r.status_code == 401 and r.content == b""
    assert client.get("/info").status_code == 401
    assert client.post("/embed", json={"inputs": "a"}, headers={"authorization": "Bearer s3cret"}).status_code == 200
    # Probes stay open, as in TEI.
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_unknown_fields_are_ignored_like_serde(embedder) -> None:
    assert embedder.post("/embed", json={"inputs": "a", "extra": 1}).status_code == 200
