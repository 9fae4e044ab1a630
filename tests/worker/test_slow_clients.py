"""Slow, endless and vanishing clients against the real worker server on loopback.

The deadlines are set to about a second so the tests stay short; the defaults (10 s for headers,
30 s for a body) are the same mechanism with larger numbers.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import httpx
import pytest

DEADLINES = {"header_read_timeout": 1.0, "body_read_timeout": 1.0}


@pytest.fixture
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing, or None if it was still open after ``within`` seconds."""
    sock.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


def test_slowloris_connections_are_cut_and_others_are_served(serve: Any, embedder_engine: Any, no_error_logs: Any) -> None:
    url = serve(embedder_engine, **DEADLINES)
    socks = [socket.create_connection(_addr(url), timeout=5) for _ in range(100)]
    stop = threading.Event()

    def trickle() -> None:  # one header line every 0.2 s on every connection, never the blank line
        for s in socks:
            s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
        while not stop.is_set():
            for s in socks:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            time.sleep(0.2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        # Meanwhile the worker answers an ordinary client.
        assert httpx.post(url + "/embed", json={"inputs": "a"}, timeout=30).status_code == 200
        began = time.monotonic()
        answers = [_closed_by_server(s, within=15) for s in socks]
        assert all(a is not None for a in answers), "a trickling connection was still open after 15 s"
        assert time.monotonic() - began < 15
        # (Whether each one read the 408 first or got a reset depends on when it last wrote.)
    finally:
        stop.set()
        t.join(5)
        for s in socks:
            s.close()
    assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_late_headers_get_408_and_a_close(serve: Any, embedder_engine: Any) -> None:
    url = serve(embedder_engine, **DEADLINES)
    with socket.create_connection(_addr(url), timeout=5) as s:  # sends nothing at all
        assert (_closed_by_server(s, within=10) or b"").startswith(b"HTTP/1.1 408")
    with socket.create_connection(_addr(url), timeout=5) as s:  # half of its headers, then silence
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        assert (_closed_by_server(s, within=10) or b"").startswith(b"HTTP/1.1 408")


def test_a_stalled_body_is_cut_without_an_error(serve: Any, embedder_engine: Any, no_error_logs: Any) -> None:
    url = serve(embedder_engine, **DEADLINES)
    app = serve.app
    with socket.create_connection(_addr(url), timeout=5) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inp")
        assert _closed_by_server(s, within=10) is not None
    assert app.metrics.request_failure.value(err="inference") == 0
    # A keep-alive client that is simply slow between requests is not cut mid-request.
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
        time.sleep(0.5)
        assert client.post("/embed", json={"inputs": "b"}).status_code == 200


def test_a_chunked_body_over_the_limit_stops_being_read(serve: Any, embedder_engine: Any, no_error_logs: Any) -> None:
    url = serve(embedder_engine, payload_limit=64 * 1024, body_read_timeout=30.0)
    sent = 0
    chunk = b"a" * 65536
    with socket.create_connection(_addr(url), timeout=5) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.settimeout(2)
        try:
            while sent < 256 * 1024 * 1024:  # would be 256 MiB if the server kept reading
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the server closed, or stopped reading and the buffers filled up
            pass
        s.settimeout(5)
        reply = b""
        try:
            while not reply.endswith(b"exceeded"):
                data = s.recv(4096)
                if not data:
                    break
                reply += data
        except OSError:
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes past a 64 KiB limit"


def test_a_client_that_leaves_mid_body_is_not_an_error(serve: Any, embedder_engine: Any, no_error_logs: Any) -> None:
    url = serve(embedder_engine)
    app = serve.app
    with socket.create_connection(_addr(url), timeout=5) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\": \"")
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while app.service.permits.free != app.config.max_concurrent_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the handler finish
    assert app.metrics.request_failure.value(err="inference") == 0
    assert httpx.get(url + "/health", timeout=30).status_code == 200
