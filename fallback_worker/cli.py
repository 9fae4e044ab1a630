"""Command line: text-embeddings-router's flags and env vars, so one argument list starts either runtime.

Order of precedence as in TEI (clap): a flag beats its env var, which beats the default. TEI flags this
worker cannot honour are accepted and logged as ignored, so that any TEI command line starts it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .config import WorkerConfig, default_openvino_cache

log = logging.getLogger("fallback_worker")

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}
# Accepted for compatibility, with no effect here (the reason is logged).
IGNORED = {
    "dense_path": "Dense modules are not supported; the pooled output is returned",
    "otlp_endpoint": "no OpenTelemetry export",
    "otlp_service_name": "no OpenTelemetry export",
    "prometheus_port": "metrics are served at /metrics on the main port (as TEI's HTTP server does)",
    "disable_spans": "logs carry no spans",
    "hf_api_token": "deprecated in TEI; use --hf-token",
}


def parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tei-fallback-worker",
        description="A text-embeddings-inference compatible server on transformers (flags as text-embeddings-router).",
    )
    env = os.environ.get

    def add(
        *flags: str, envvar: str, type: Callable[[str], Any] = str, default: Any = None, help: str = "", **kw: Any
    ) -> None:
        raw = env(envvar)
        value = default
        if raw is not None and raw != "":
            value = type(raw) if type is not list else [raw]
        if help != argparse.SUPPRESS:
            help = f"{help} [env: {envvar}]"
        if type is not list:  # type=list marks a list option: argparse keeps each value a string, nargs the list
            kw["type"] = type
        p.add_argument(*flags, default=value, help=help, **kw)

    add("--model-id", envvar="MODEL_ID", help="hub id or local directory (save_pretrained layout)")
    add("--revision", envvar="REVISION", help="hub revision")
    add("--tokenization-workers", envvar="TOKENIZATION_WORKERS", type=int,
        help="tokenizer threads (default: CPUs - 1)")
    add("--dtype", envvar="DTYPE",
        help="float16 | float32 | bfloat16 (default: float16 on CUDA; on CPU bfloat16 where it measures "
             "faster than float32, else float32)")
    add("--served-model-name", envvar="SERVED_MODEL_NAME")
    add("--pooling", envvar="POOLING", help="cls | mean | last-token (default: 1_Pooling/config.json)")
    add("--max-concurrent-requests", envvar="MAX_CONCURRENT_REQUESTS", type=int, default=512,
        help="admission permits, one per input")
    add("--max-batch-tokens", envvar="MAX_BATCH_TOKENS", type=int, default=16384,
        help="padded tokens per forward batch")
    add("--max-batch-requests", envvar="MAX_BATCH_REQUESTS", type=int, help="inputs per forward batch")
    add("--max-client-batch-size", envvar="MAX_CLIENT_BATCH_SIZE", type=int, default=32, help="inputs per HTTP request")
    add("--auto-truncate", envvar="AUTO_TRUNCATE", type=parse_bool, default=True, nargs="?", const=True,
        help="truncate inputs longer than the model's max length (bare flag = true)")
    add("--default-prompt-name", envvar="DEFAULT_PROMPT_NAME")
    add("--default-prompt", envvar="DEFAULT_PROMPT")
    add("--dense-path", envvar="DENSE_PATH")
    add("--hf-token", envvar="HF_TOKEN")
    add("--hf-api-token", envvar="HF_API_TOKEN", help=argparse.SUPPRESS)
    p.add_argument("--hostname", default=None, help="bind address; default 0.0.0.0 like TEI [env: HOSTNAME]")
    add("-p", "--port", envvar="PORT", type=int, default=3000, help="port")
    add("--uds-path", envvar="UDS_PATH", help=argparse.SUPPRESS)
    add("--huggingface-hub-cache", envvar="HUGGINGFACE_HUB_CACHE")
    add("--payload-limit", envvar="PAYLOAD_LIMIT", type=int, default=2_000_000, help="request body limit in bytes")
    add("--api-key", envvar="API_KEY", help="require Authorization: Bearer <key> on inference routes")
    add("--json-output", envvar="JSON_OUTPUT", type=parse_bool, default=False, nargs="?", const=True)
    add("--disable-spans", envvar="DISABLE_SPANS", type=parse_bool, default=False, nargs="?", const=True)
    add("--otlp-endpoint", envvar="OTLP_ENDPOINT")
    add("--otlp-service-name", envvar="OTLP_SERVICE_NAME")
    add("--prometheus-port", envvar="PROMETHEUS_PORT", type=int)
    add("--cors-allow-origin", envvar="CORS_ALLOW_ORIGIN", type=list, nargs="+")
    # Beyond TEI.
    add("--rerank-mode", envvar="FALLBACK_RERANK_MODE", default="cross-encoder",
        choices=["cross-encoder", "bi-encoder"],
        help="bi-encoder: an embedding model answers /rerank by cosine similarity")
    add("--device", envvar="FALLBACK_DEVICE", help="cpu | cuda | cuda:N (default: cuda when available)")
    add("--warmup", envvar="FALLBACK_WARMUP", type=parse_bool, default=True, nargs="?", const=True,
        help="run one warm-up batch before opening the port")
    add("--forward-workers", envvar="FALLBACK_FORWARD_WORKERS", type=int,
        help="forward passes run at once, sharing the torch threads (default: 2 on CPU, 1 on CUDA)")
    add("--unpadded", envvar="FALLBACK_UNPADDED", type=parse_bool, default=True, nargs="?", const=True,
        help="run BERT-family models on packed tokens without padding (false: padded batches through transformers)")
    add("--engine", envvar="FALLBACK_ENGINE", default="auto", choices=["auto", "torch", "openvino"],
        help="what runs the model: torch, OpenVINO (CPU only; in the [worker] extra), "
             "or auto: OpenVINO on the CPU when installed, else torch")
    add("--openvino-cache-dir", envvar="FALLBACK_OPENVINO_CACHE_DIR", default=str(default_openvino_cache()),
        help="where converted models and compiled blobs are kept between starts ('' keeps none)")
    add("--header-read-timeout", envvar="FALLBACK_HEADER_READ_TIMEOUT", type=float, default=10.0,
        help="seconds a client has to send a request's line and headers (else 408 and close)")
    add("--body-read-timeout", envvar="FALLBACK_BODY_READ_TIMEOUT", type=float, default=30.0,
        help="seconds a client has to send a request's body once its headers are in (else close)")
    return p


def resolve_hostname(flag: str | None) -> str:
    """TEI reads HOSTNAME too, and falls back to 0.0.0.0 when it is not an IP (Docker sets it to the container id)."""
    value = flag if flag is not None else os.environ.get("HOSTNAME")
    if value is None:
        return "0.0.0.0"
    if value == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        log.warning("Invalid hostname %r, defaulting to 0.0.0.0", value)
        return "0.0.0.0"
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "message": record.getMessage(),
            "target": record.name,
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(json_output: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_output:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper() if os.environ.get("LOG_LEVEL", "").isalpha() else "INFO")


def to_config(ns: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        model_id=ns.model_id,
        revision=ns.revision,
        dtype=ns.dtype,
        pooling=ns.pooling,
        max_concurrent_requests=ns.max_concurrent_requests,
        max_batch_tokens=ns.max_batch_tokens,
        max_batch_requests=ns.max_batch_requests,
        max_client_batch_size=ns.max_client_batch_size,
        auto_truncate=ns.auto_truncate,
        default_prompt_name=ns.default_prompt_name,
        default_prompt=ns.default_prompt,
        hf_token=ns.hf_token or ns.hf_api_token,
        hostname=resolve_hostname(ns.hostname),
        port=ns.port,
        served_model_name=ns.served_model_name,
        huggingface_hub_cache=ns.huggingface_hub_cache,
        payload_limit=ns.payload_limit,
        api_key=ns.api_key,
        json_output=ns.json_output,
        tokenization_workers=ns.tokenization_workers,
        cors_allow_origin=[o for v in ns.cors_allow_origin for o in v.split(",")] if ns.cors_allow_origin else None,
        rerank_mode=ns.rerank_mode,
        device=ns.device,
        forward_workers=ns.forward_workers,
        unpadded=ns.unpadded,
        engine=ns.engine,
        openvino_cache_dir=ns.openvino_cache_dir or None,
        header_read_timeout=ns.header_read_timeout,
        body_read_timeout=ns.body_read_timeout,
    )


def bind(hostname: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in hostname else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((hostname, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    setup_logging(bool(ns.json_output))
    if not ns.model_id:
        parser.error("--model-id (or MODEL_ID) is required")
    for name, reason in IGNORED.items():
        if getattr(ns, name) not in (None, False):
            log.warning("--%s is accepted but ignored: %s", name.replace("_", "-"), reason)
    if ns.default_prompt and ns.default_prompt_name:
        parser.error("--default-prompt and --default-prompt-name cannot be used together")
    config = to_config(ns)

    # Let idle OpenMP threads sleep instead of spinning. A worker often shares its cores (other
    # workers, the tokenizer, the HTTP loop); spinning threads then stall each other's barriers,
    # which made small batches up to 30x slower on a busy 2-core host. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    # Heavy imports after argument checks, so `--help` and flag errors are instant.
    import uvicorn

    from . import hardware
    from .errors import StartupError
    from .http_server import server_config
    from .loading import load_engine
    from .server import create_app

    if config.hf_token:
        os.environ.setdefault("HF_TOKEN", config.hf_token)
    log.info("loading %s", config.model_id)
    try:
        engine = load_engine(config)
        if config.default_prompt_name and config.default_prompt_name not in engine.spec.prompts:
            raise StartupError(
                f"--default-prompt-name {config.default_prompt_name!r} is not a key of the model's prompts"
            )
        if config.rerank_mode == "bi-encoder" and engine.spec.kind != "embedding":
            log.warning("--rerank-mode bi-encoder needs an embedding model; this one is a %s", engine.spec.kind)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    spec = engine.spec
    log.info(
        "model: %s, pooling %s, dtype %s on %s, max_input_length %d, %d threads, %s, %s batches",
        spec.kind, spec.pooling, spec.dtype, spec.device, spec.max_input_length, hardware.usable_cpus(),
        spec.engine, "unpadded" if spec.unpadded else "padded",
    )
    if ns.warmup:
        began = time.perf_counter()
        count, length = engine.warmup(config.max_batch_tokens, config.max_batch_requests)
        log.info("warmed up with %d x %d tokens in %.1fs", count, length, time.perf_counter() - began)

    workers = config.tokenization_workers or max(1, min(64, hardware.usable_cpus() - 1))
    app = create_app(engine, config, tokenization_workers=workers)
    try:
        sock = bind(config.hostname, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.hostname, config.port, exc)
        return 1
    log.info("Starting HTTP server: %s:%d", config.hostname, config.port)
    log.info("Ready")
    server = uvicorn.Server(
        server_config(
            app, header_timeout=config.header_read_timeout, body_timeout=config.body_read_timeout,
            timeout_graceful_shutdown=30, lifespan="on",
        )
    )
    # uvicorn handles SIGTERM/SIGINT gracefully (stop accepting, finish open requests, lifespan
    # shutdown drains the batcher) and then re-raises the signal to the previous handler. A no-op
    # previous handler makes that graceful stop an ordinary exit 0, as TEI's is.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    log.info("stopped")
    return 0
