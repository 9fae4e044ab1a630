"""Hostile input over real HTTP: a 4xx in TEI's shape, never a 5xx, a traceback or an error log.

TEI parses bodies with serde_json behind axum's Json extractor: a lone surrogate escape and
nesting past 128 levels are JSON syntax errors there (400, plain text); we answer the same.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import httpx
import pytest

LONE = '"\\ud800"'  # the JSON text of a string holding a lone surrogate


def lone(template: str) -> str:
    """A JSON body with a lone-surrogate string where the template has "@"."""
    return template.replace("@", LONE)


@pytest.fixture
def url(serve: Any, embedder_engine: Any) -> str:
    return serve(embedder_engine)


@pytest.fixture
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def post(url: str, path: str, body: bytes | str, ctype: str = "application/json") -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.post(url + path, content=content, headers={"content-type": ctype}, timeout=60)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", lone('{"inputs": @}')),
        ("/embed", lone('{"inputs": ["ok", @]}')),
        ("/embed", lone('{"inputs": "ok", "prompt_name": @}')),
        ("/embed_all", lone('{"inputs": @}')),
        ("/tokenize", lone('{"inputs": @}')),
        ("/tokenize", '{"inputs": ["a", "b\\udfff"]}'),
        ("/rerank", lone('{"query": @, "texts": ["a"]}')),
        ("/rerank", lone('{"query": "q", "texts": [@]}')),
        ("/similarity", lone('{"inputs": {"source_sentence": @, "sentences": ["a"]}}')),
        ("/v1/embeddings", lone('{"input": @}')),
        ("/v1/embeddings", lone('{"input": "a", "model": @}')),
        ("/embed", lone('{@: 1, "inputs": "a"}')),  # in a key
    ],
)
def test_lone_surrogates_are_a_json_error_not_a_backend_failure(url: str, no_error_logs: Any, path: str, body: str) -> None:
    r = post(url, path, body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert "surrogate" in r.text and "Traceback" not in r.text


def test_a_valid_surrogate_pair_is_text(url: str, no_error_logs: Any) -> None:
    r = post(url, "/tokenize", '{"inputs": "smile \\ud83d\\ude00"}')
    assert r.status_code == 200
    assert "\U0001f600" in "".join(t["text"] for t in r.json()[0])


@pytest.mark.parametrize("depth", [129, 900, 100_000])
def test_deep_nesting_is_400_like_serde_json(url: str, no_error_logs: Any, depth: int) -> None:
    for body in ("[" * depth + "]" * depth, '{"inputs": ' + "[" * depth + "]" * depth + "}"):
        r = post(url, "/embed", body)
        assert r.status_code == 400, r.text[:200]
        assert "recursion limit" in r.text


def test_nesting_within_the_limit_is_judged_by_shape(url: str, no_error_logs: Any) -> None:
    r = post(url, "/embed", '{"inputs": ' + "[" * 100 + "]" * 100 + "}")
    assert r.status_code == 422 and "Failed to deserialize" in r.text
    assert len(r.text) < 300, "the body is not echoed back whole"


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("/embed", {"inputs": ["a"] * 200_000}, 422),  # batch size
        ("/rerank", {"query": "q", "texts": ["a"] * 200_000}, 424),  # not a reranker: checked first, as TEI
        ("/decode", {"ids": [[5]] * 100_000}, 422),  # batch size
        ("/embed", {"inputs": [7] * 300_000}, 200),  # one id input, cut like TEI's
        ("/decode", {"ids": [7] * 300_000}, 200),
        ("/embed", {"inputs": [[7] * 1000] * 30}, 200),
        ("/embed", {"inputs": 1e400}, 422),  # not a JSON number serde accepts as input
        ("/embed", {"inputs": [2**40]}, 422),  # ids are u32
    ],
)
def test_huge_arrays_and_odd_values_get_4xx_or_an_answer(url: str, no_error_logs: Any, path: str, payload: Any, status: int) -> None:
    import json

    r = post(url, path, json.dumps(payload))
    assert r.status_code == status, r.text[:300]
    assert "Traceback" not in r.text


def test_invalid_utf8_and_non_json_numbers(url: str, no_error_logs: Any) -> None:
    assert post(url, "/embed", b'{"inputs": "\xff\xfe"}').status_code == 400
    assert post(url, "/embed", '{"inputs": ' + "9" * 5000 + "}").status_code == 400  # Python's int digit limit


def test_wrong_content_type_is_415_before_the_body_is_read(url: str, no_error_logs: Any) -> None:
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = post(url, "/embed", '{"inputs": "a"}', ctype)
        assert r.status_code == 415 and "application/json" in r.text


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/embed", {"POST"}),
    ("PUT", "/rerank", {"POST"}),
    ("DELETE", "/", {"GET", "POST"}),
    ("POST", "/info", {"GET"}),
    ("PATCH", "/health", {"GET"}),
])
def test_405_names_the_allowed_methods(url: str, no_error_logs: Any, method: str, path: str, allowed: set[str]) -> None:
    r = httpx.request(method, url + path, timeout=30)
    assert r.status_code == 405
    assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}


def test_root_still_serves_health_and_the_default_route(url: str) -> None:
    assert httpx.get(url + "/", timeout=30).status_code == 200
    r = httpx.post(url + "/", json={"inputs": "a"}, timeout=30)
    assert r.status_code == 200 and len(r.json()) == 1


def test_garbage_on_the_socket_is_a_400_not_an_error(url: str, no_error_logs: Any) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert httpx.get(url + "/health", timeout=30).status_code == 200
