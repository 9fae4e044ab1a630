"""Admission (429 per TEI 1.9) and dropped clients, over real HTTP on loopback.

The model is real; it is wrapped in a gate that holds the forward pass until the test opens it, so
"the model is busy" is a state the test controls instead of a race it hopes to win.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from fallback_worker.config import WorkerConfig
from fallback_worker.server import App


class GatedEngine:
    """The real engine, but each forward pass waits for ``gate``; records what it ran."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.busy = threading.Event()
        self.ran: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def run(self, task: str, batch: Any) -> Any:
        self.busy.set()
        assert self.gate.wait(60), "test never opened the gate"
        self.ran.extend(len(e.ids) for e in batch)
        return self._engine.run(task, batch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(predicate: Any, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def served(embedder_engine: Any) -> Iterator[tuple[App, GatedEngine, str]]:
    gated = GatedEngine(embedder_engine)
    # One forward thread, so that a batch held at the gate holds the model (CPU default is two).
    config = WorkerConfig(model_id="tiny", max_concurrent_requests=3, forward_workers=1)
    app = App(gated, config, tokenization_workers=1)  # type: ignore[arg-type]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app.build(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_until(lambda: server.started, "the server to start")
    try:
        yield app, gated, f"http://127.0.0.1:{port}"
    finally:
        gated.gate.set()
        server.should_exit = True
        thread.join(timeout=30)


def test_more_inputs_than_permits_get_429_and_the_server_carries_on(served) -> None:
    app, gated, url = served
    results: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: results.update(a=httpx.post(f"{url}/embed", json={"inputs": ["a b", "c d"]}, timeout=60)))
    first.start()
    assert gated.busy.wait(30)  # two of three permits are now held by a batch in the model
    over = httpx.post(f"{url}/embed", json={"inputs": ["e", "f"]}, timeout=30)
    assert over.status_code == 429
    assert over.json() == {"error": "Model is overloaded", "error_type": "Overloaded"}
    rerank = httpx.post(f"{url}/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}, timeout=30)
    assert rerank.status_code == 429
    gated.gate.set()
    first.join(30)
    assert results["a"].status_code == 200
    # Permits come back: the same request now fits, and the failures were counted as TEI does.
    assert httpx.post(f"{url}/embed", json={"inputs": ["e", "f"]}, timeout=30).status_code == 200
    assert app.service.permits.free == 3
    assert 'te_request_failure{err="overloaded"} 2' in httpx.get(f"{url}/metrics").text
    assert httpx.get(f"{url}/health").status_code == 200


def test_one_request_over_the_permit_count_is_refused_at_once(served) -> None:
    _, gated, url = served
    gated.gate.set()
    r = httpx.post(f"{url}/embed", json={"inputs": ["a", "b", "c", "d"]}, timeout=30)
    assert r.status_code == 429
    assert gated.ran == [], "a refused request costs no forward pass"


def test_a_client_that_leaves_costs_no_forward_pass(served, caplog) -> None:
    app, gated, url = served
    holder = threading.Thread(target=lambda: httpx.post(f"{url}/embed", json={"inputs": "a"}, timeout=60))
    holder.start()
    assert gated.busy.wait(30)
    long_text = "the cat reads a book at home " * 3  # a length no other request in this test has
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/embed", json={"inputs": long_text}, timeout=httpx.Timeout(30, read=0.5))
    # Once the server has seen the disconnect, the handler gives its permit back.
    _wait_until(lambda: app.service.permits.free == 2, "the dropped request to release its permit")
    gated.gate.set()
    holder.join(30)
    _wait_until(lambda: app.metrics.request_failure.value(err="dropped") == 1, "the drop to be counted")
    assert len(gated.ran) == 1, "only the first request reached the model"
    assert httpx.get(f"{url}/health").status_code == 200
    gc.collect()  # an unread future's "exception was never retrieved" is logged when it is collected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "a client leaving is not an error"
