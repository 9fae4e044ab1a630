"""/tokenize and /decode: admitted like inference, capped like TEI, and unable to starve /embed."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest


class GatedTokenizer:
    """The real tokenizer; /tokenize calls wait for ``gate`` (a long tokenization the test controls)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.gate = threading.Event()
        self.busy = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def tokenize(self, *args: Any, **kwargs: Any) -> Any:
        self.busy.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self._tokenizer.tokenize(*args, **kwargs)


class EngineWith:
    def __init__(self, engine: Any, tokenizer: Any) -> None:
        self._engine = engine
        self.tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@pytest.fixture
def gated(serve: Any, embedder_engine: Any) -> Any:
    tok = GatedTokenizer(embedder_engine.tokenizer)
    url = serve(EngineWith(embedder_engine, tok), max_concurrent_requests=4, tokenization_workers=1)
    yield url, tok
    tok.gate.set()


def test_embed_is_served_while_a_long_tokenize_runs(gated: Any) -> None:
    url, tok = gated
    done: dict[str, httpx.Response] = {}
    long = threading.Thread(target=lambda: done.update(r=httpx.post(f"{url}/tokenize", json={"inputs": "a b c"}, timeout=60)))
    long.start()
    assert tok.busy.wait(30)
    # One tokenizer thread for /embed, and the /tokenize call holds its own: /embed is not stuck behind it.
    r = httpx.post(f"{url}/embed", json={"inputs": "the cat"}, timeout=30)
    assert r.status_code == 200
    assert long.is_alive(), "the /embed answer came while /tokenize was still running"
    tok.gate.set()
    long.join(30)
    assert done["r"].status_code == 200


def test_tokenize_inputs_take_admission_permits(gated: Any) -> None:
    url, tok = gated
    held = threading.Thread(target=lambda: httpx.post(f"{url}/tokenize", json={"inputs": ["a", "b", "c"]}, timeout=60))
    held.start()
    assert tok.busy.wait(30)
    # 3 of 4 permits are held by the running /tokenize.
    r = httpx.post(f"{url}/embed", json={"inputs": ["x", "y"]}, timeout=30)
    assert (r.status_code, r.json()) == (429, {"error": "Model is overloaded", "error_type": "Overloaded"})
    assert httpx.post(f"{url}/decode", json={"ids": [[5], [6]]}, timeout=30).status_code == 429
    tok.gate.set()
    held.join(30)
    assert httpx.post(f"{url}/embed", json={"inputs": ["x", "y"]}, timeout=30).status_code == 200


def test_tokenize_refuses_text_over_the_character_cap(make_client: Any, embedder_engine: Any) -> None:
    client = make_client(embedder_engine)
    limit = embedder_engine.spec.max_input_length * 250  # TEI: MAX_CHAR_MULTIPLIER = 250
    r = client.post("/tokenize", json={"inputs": "a" * (limit + 1)})
    assert r.status_code == 422
    assert r.json() == {
        "error": f"Input validation error: `inputs` must have less than {limit} characters. Given: {limit + 1}",
        "error_type": "Validation",
    }
    assert client.post("/tokenize", json={"inputs": ["ok", "a" * (limit + 1)]}).status_code == 422
    assert client.post("/tokenize", json={"inputs": "a " * (limit // 2)}).status_code == 200


def test_tokenize_byte_offsets_on_non_ascii_text(make_client: Any, embedder_engine: Any) -> None:
    client = make_client(embedder_engine)
    text = "naïve café 😀 ok"
    tokens = client.post("/tokenize", json={"inputs": text, "add_special_tokens": False}).json()[0]
    raw = text.encode()
    for t in tokens:
        assert raw[t["start"]:t["stop"]].decode(errors="replace") == t["text"]


def test_decode_empty_ids_is_tei_empty_error(make_client: Any, embedder_engine: Any) -> None:
    client = make_client(embedder_engine)
    r = client.post("/decode", json={"ids": []})
    assert (r.status_code, r.json()["error_type"]) == (400, "Empty")
