"""Fixtures for the fallback_worker suite: tiny real models built once per session, loaded engines,
and in-process clients that run the real ASGI app (lifespan, batcher thread and all)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# tests/fixtures is shared by several suites; make it importable however pytest was started.
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fixtures.tiny_models import build_tiny_embedder, build_tiny_reranker, minilm_path


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"))


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reranker(tmp_path_factory.mktemp("tiny-reranker"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


# ---- worker-only fixtures below (not meant for tests/conftest.py) ------------------------------


@pytest.fixture(scope="session")
def embedder_engine(tiny_embedder_dir: Path) -> Any:
    from fallback_worker.engine import Engine

    return Engine.load(str(tiny_embedder_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def reranker_engine(tiny_reranker_dir: Path) -> Any:
    from fallback_worker.engine import Engine

    return Engine.load(str(tiny_reranker_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def minilm_engine(minilm_dir: Path) -> Any:
    from fallback_worker.engine import Engine

    return Engine.load(str(minilm_dir), dtype="float32", device="cpu")


ClientFactory = Callable[..., Any]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """make_client(engine, **WorkerConfig fields) -> a started TestClient; closed after the test."""
    from starlette.testclient import TestClient

    from fallback_worker.config import WorkerConfig
    from fallback_worker.server import create_app

    opened: list[Any] = []

    def make(engine: Any, **config: Any) -> Any:
        config.setdefault("model_id", "tiny")
        client = TestClient(create_app(engine, WorkerConfig(**config)), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def embedder(make_client: ClientFactory, embedder_engine: Any) -> Any:
    return make_client(embedder_engine)


@pytest.fixture
def reranker(make_client: ClientFactory, reranker_engine: Any) -> Any:
    return make_client(reranker_engine)


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """serve(app_or_engine, **WorkerConfig fields) -> base URL of the real worker app on a loopback port.

    Runs the worker's own server setup (uvicorn with the read deadlines of http_server.py) in a
    thread; `header_read_timeout`/`body_read_timeout` in the fields set the deadlines.
    """
    import socket
    import threading
    import time

    import uvicorn

    from fallback_worker.config import WorkerConfig
    from fallback_worker.http_server import server_config
    from fallback_worker.server import App

    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(engine: Any, *, tokenization_workers: int = 1, **config: Any) -> str:
        config.setdefault("model_id", "tiny")
        cfg = WorkerConfig(**config)
        app = App(engine, cfg, tokenization_workers=tokenization_workers)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(
            server_config(
                app.build(), host="127.0.0.1", port=port, log_level="warning",
                header_timeout=cfg.header_read_timeout, body_timeout=cfg.body_read_timeout,
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the worker app did not start"
            time.sleep(0.01)
        start.app = app  # type: ignore[attr-defined]  # the last App started, for tests that look inside
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=30)
