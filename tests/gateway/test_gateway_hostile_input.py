"""Hostile and broken requests get TEI's 4xx error bodies from the gateway, never a 500.

These need no instance: every case is refused before the gateway looks for one, so the
quickstart profile is served with its instances not running (the gateway marks them down).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gw_harness import GatewayThread, bearer, free_port_block, plan_for
from prometheus_client import CollectorRegistry

from tei_manager.core.models import Profile
from tei_manager.gateway import body as body_module
from tei_manager.gateway.app import create_app
from tei_manager.gateway.server import server_options
from tei_manager.profiles import load_profile

REPO = Path(__file__).resolve().parents[2]
KEY = "demo-key"
HEADERS = {**bearer(KEY), "content-type": "application/json"}


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayThread]:
    data = load_profile(REPO / "profiles" / "quickstart.yaml").model_dump(mode="json", exclude_unset=True)
    base = free_port_block(2)
    for n, dep in enumerate(data["deployments"]):
        dep["port"] = base + n
    profile = Profile.model_validate(data)
    app = create_app(profile, plan_for(profile), keys={"demo": [KEY]}, registry=CollectorRegistry(),
                     gpu_metrics=False, follow_supervisor=False, probe_interval_s=60)
    # A short header deadline so the slow-client test stays short.
    with GatewayThread(app, **server_options(header_timeout_s=1.0)) as gw:
        yield gw


def _post(server: GatewayThread, raw: bytes, path: str = "/embed", **headers: str) -> httpx.Response:
    return httpx.post(server.url + path, content=raw, headers={**HEADERS, **headers}, timeout=30)


def _tei_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and "Traceback" not in body["error"]
    return str(body["error"])


def _no_500s(server: GatewayThread) -> None:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert not [line for line in text.splitlines() if line.startswith("tei_manager_gateway_requests_total")
                and 'status="500"' in line]


def test_lone_surrogates_are_a_400_not_a_500(server: GatewayThread) -> None:
    message = _tei_error(_post(server, b'{"inputs": "\\ud800"}'), 400)
    assert "surrogate" in message
    _tei_error(_post(server, b'{"inputs": ["ok", "\\udfff"]}'), 400)
    _no_500s(server)


def test_deep_nesting_is_refused(server: GatewayThread) -> None:
    deep_arrays = b'{"inputs": ' + b"[" * 900 + b'"x"' + b"]" * 900 + b"}"
    assert "inputs[0]" in _tei_error(_post(server, deep_arrays), 422)
    deepest = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "depth" in _tei_error(_post(server, deepest), 400)
    _no_500s(server)


def test_huge_arrays_meet_the_input_cap(server: GatewayThread) -> None:
    raw = b'{"inputs": [' + b",".join([b'"a"'] * 100_000) + b"]}"
    assert "gateway.max_request_inputs" in _tei_error(_post(server, raw), 413)


def test_bodies_over_the_limit_are_413_with_or_without_content_length(server: GatewayThread) -> None:
    too_big = b'{"inputs": "' + b"a" * (body_module.MAX_BODY_BYTES + 1) + b'"}'
    _tei_error(_post(server, too_big), 413)
    # Chunked: no Content-Length to check up front.  The gateway must stop reading at the limit
    # and answer, not buffer all 64 MiB this client is willing to send.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    sock.sendall(head)
    chunk = b"a" * (1 << 20)
    sent = 0
    try:
        while sent < 64 << 20:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there: stop sending
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:
        pass  # the gateway closed the connection on us: also a refusal
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 40 << 20


def test_wrong_content_type_is_415_like_tei(server: GatewayThread) -> None:
    message = _tei_error(_post(server, b'{"inputs": "x"}', **{"content-type": "text/plain"}), 415)
    assert "application/json" in message


def test_405_names_the_allowed_methods(server: GatewayThread) -> None:
    response = httpx.get(server.url + "/embed", headers=bearer(KEY), timeout=10)
    _tei_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_a_client_that_disconnects_mid_body_is_not_an_error(
    server: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall((f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\": ").encode())
        time.sleep(0.2)
        sock.close()
    time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    _no_500s(server)


def test_slow_headers_are_cut_off(server: GatewayThread) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    started = time.monotonic()
    sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
    closed = False
    try:
        for _ in range(20):  # one more header line every 0.25 s: never finishing
            time.sleep(0.25)
            sock.sendall(b"X-Slow: 1\r\n")
    except OSError:
        closed = True
    if not closed:
        sock.settimeout(5)
        closed = sock.recv(1024) == b""
    sock.close()
    assert closed and time.monotonic() - started < 6


def test_slow_bodies_are_cut_off(server: GatewayThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body_module, "BODY_TIMEOUT_S", 1.0)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall((f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode())
    sock.settimeout(5)
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    # ... and the connection goes with it at once (not a header deadline later: 1 s here, 10 s in
    # `serve`), so a slow sender does not keep its socket.
    assert b"connection: close" in answer.lower()
    sock.settimeout(0.5)
    try:
        sock.sendall(b"a")
        assert sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass
    sock.close()
