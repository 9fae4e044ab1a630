"""The ASGI app: TEI 1.9's routes, bodies, status codes, error bodies and x-* headers.

HTTP plumbing only: auth, body limits and decoding, error rendering, headers. The work itself is
in service.py. Responses are built by hand (no framework validation) so that every failure has
exactly TEI's status and body, and never a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import TEI_API_VERSION, __version__, schemas
from .batcher import Batcher
from .config import WorkerConfig
from .engine import BaseEngine
from .errors import BackendError, BodyError, TEIError
from .metrics import Metrics
from .service import ClientGone, Service, Timings

log = logging.getLogger("fallback_worker.server")

try:  # orjson writes float arrays several times faster than json; optional
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - depends on the environment

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=lambda o: o.tolist(), separators=(",", ":")).encode()


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def tei_error(exc: TEIError, openai: bool) -> Response:
    if openai:
        body: dict[str, Any] = {"message": exc.message, "code": exc.status, "type": exc.error_type}
    else:
        body = {"error": exc.message, "error_type": exc.error_type}
    return json_response(body, exc.status)


CPU_MAX_BATCH_REQUESTS = 16

Handler = Callable[[Any, Request, Timings], Awaitable[tuple[Any, str]]]


def ranked(scores: Sequence[float]) -> list[tuple[int, float]]:
    """(index, score) by score, highest first, with TEI's order for ties.

    TEI sorts ascending (a stable sort) and then reverses the list (router/src/http/server.rs,
    rerank and predict: `sort_by(partial_cmp)` then `reverse()`), so equal scores come out with
    the highest index first. `sorted(..., reverse=True)` would keep the lowest index first.
    """
    return sorted(enumerate(scores), key=lambda p: p[1])[::-1]


def public_model_id(model_id: str) -> str:
    """The model id /info reports: a hub id as given; a local directory by its name only.

    TEI reports --model-id verbatim, which in its container is a path inside the container
    (`/data/...`); for a worker on the host that would reveal the host's directory layout (user
    names, mount points) to every client. The directory's name is what a hub id looks like.
    """
    path = Path(model_id)
    if path.is_absolute() or model_id.startswith((".", "~")) or ".." in path.parts:
        return Path(model_id).expanduser().resolve().name or model_id
    return model_id  # a hub id, or a relative directory shaped like one ("org/name"): nothing of the host


class App:
    """Holds the service and turns handlers into Starlette endpoints with TEI's plumbing."""

    def __init__(self, engine: BaseEngine, config: WorkerConfig, *, tokenization_workers: int) -> None:
        self.engine = engine
        self.config = config
        self.metrics = Metrics(engine.spec.max_input_length)
        self.max_batch_requests = config.max_batch_requests
        if self.max_batch_requests is None and not engine.spec.device.startswith("cuda"):
            # On CPU, throughput stops growing after ~16 sequences per batch (2-core EPYC, MiniLM:
            # batch 16, 32 and 64 within noise; 8 is ~25% slower when the host is quiet) while
            # latency keeps growing, and smaller batches let responses overlap the next forward
            # pass. TEI's CPU backends cap batches too (ORT forces 8). /info reports the value.
            self.max_batch_requests = CPU_MAX_BATCH_REQUESTS
        forward_workers = config.forward_workers
        if forward_workers is None:
            forward_workers = engine.default_forward_workers()
        self.batcher = Batcher(
            engine, self.metrics, max_batch_tokens=config.max_batch_tokens, max_batch_requests=self.max_batch_requests,
            forward_workers=forward_workers,
        )
        self.service = Service(engine, config, self.metrics, self.batcher, tokenization_workers)
        self.tokenization_workers = tokenization_workers
        self.compute_type = "gpu" if engine.spec.device.startswith("cuda") else "cpu"
        # The name clients see (/info, the OpenAI route's `model`): never a host path.
        self.model_name = config.served_model_name or public_model_id(config.model_id)

    # ---- request plumbing ----------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("authorization") == f"Bearer {key}"

    async def _body(self, request: Request) -> Any:
        # The content type first, as axum's Json extractor does: a wrong one costs no body read.
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
            raise BodyError(415, "Expected request with `Content-Type: application/json`")
        limit = self.config.payload_limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyError(413, "Failed to buffer the request body: length limit exceeded")
        # Count what arrives rather than trust Content-Length: a chunked body has none, and
        # reading stops at the limit, so an endless upload costs at most `limit` bytes of memory.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyError(413, "Failed to buffer the request body: length limit exceeded")
            chunks.append(chunk)
        return schemas.decode_json(b"".join(chunks))

    def endpoint(self, handler: Handler, *, openai: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            if not self._authorized(request):
                return Response(status_code=401)
            t = Timings()
            method = "batch"
            try:
                data = await self._body(request)
                payload, method = await handler(data, request, t)
            except BodyError as exc:
                # Over the limit, the rest of the body is unread: close the connection, or uvicorn
                # would go on reading (and discarding) an endless upload to keep it alive.
                close = {"connection": "close"} if exc.status == 413 else None
                return PlainTextResponse(exc.message, status_code=exc.status, headers=close)
            except TEIError as exc:
                self.metrics.request_count.inc(method=t.method)
                self.metrics.failure(exc.metric)
                return tei_error(exc, openai)
            except (ClientGone, ClientDisconnect):
                # The client left (while its body arrived or its inputs waited): not a failure of
                # ours, so no error log and no 5xx count; the status is for the access log only.
                return Response(status_code=499)
            except Exception as exc:
                # A bug, not bad input (that is answered above). The message goes to the error log;
                # the traceback only at debug level, so logs at error level never carry one.
                log.error("unexpected failure on %s: %s: %s", request.url.path, type(exc).__name__, exc)
                log.debug("traceback of the failure on %s", request.url.path, exc_info=True)
                self.metrics.failure("inference")
                return tei_error(BackendError(str(exc) or type(exc).__name__), openai)
            self.metrics.request_count.inc(method=method)
            self.metrics.request_success.inc(method=method)
            return json_response(payload, headers=self._headers(t))

        return run

    def _headers(self, t: Timings) -> dict[str, str]:
        total = t.total

        def ms(seconds: float) -> str:
            return str(int(seconds * 1000))

        return {
            "x-compute-type": self.compute_type,
            "x-compute-time": ms(total),
            "x-compute-characters": str(t.characters),
            "x-compute-tokens": str(t.tokens),
            "x-total-time": ms(total),
            "x-tokenization-time": ms(t.tokenization),
            "x-queue-time": ms(t.queue),
            "x-inference-time": ms(t.inference),
        }

    @staticmethod
    def _disconnect_waiter(request: Request) -> Callable[[], Awaitable[None]]:
        async def wait() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        return wait

    def _done(self, family: str, n: int, t: Timings) -> None:
        if family == "embed":
            self.metrics.embed_count.inc(n)
            self.metrics.embed_success.inc(n)
        else:
            self.metrics.predict_count.inc(n)
            self.metrics.predict_success.inc(n)
        self.metrics.observe_phases(family, t.total, t.tokenization, t.queue, t.inference)

    # ---- handlers ------------------------------------------------------------------------
    async def h_embed(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_embed(data)
        t.method = "batch" if req.batch else "single"  # te_request_count's label, failures included
        matrix = await self.service.embed(
            req.inputs, truncate=req.truncate, direction=req.direction, prompt_name=req.prompt_name,
            normalize=req.normalize, dimensions=req.dimensions, t=t, disconnected=self._disconnect_waiter(request),
        )
        self._done("embed", len(req.inputs), t)
        return matrix, t.method

    async def h_embed_all(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_embed(data)
        rows = await self.service.embed_all(
            req.inputs, truncate=req.truncate, direction=req.direction, prompt_name=req.prompt_name, t=t,
            disconnected=self._disconnect_waiter(request),
        )
        self._done("embed", len(req.inputs), t)
        return rows, "batch" if req.batch else "single"

    async def h_embed_sparse(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_embed(data)
        rows = await self.service.embed_sparse(
            req.inputs, truncate=req.truncate, direction=req.direction, prompt_name=req.prompt_name, t=t,
            disconnected=self._disconnect_waiter(request),
        )
        self._done("embed", len(req.inputs), t)
        return [[{"index": i, "value": v} for i, v in row] for row in rows], "batch" if req.batch else "single"

    async def h_openai(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_embed(data, openai=True)
        model = getattr(req, "model", None)
        if model is not None and model not in (self.model_name, self.config.model_name):
            log.warning("request names model %r; this worker serves %r", model, self.model_name)
        matrix = await self.service.embed(
            req.inputs, truncate=None, direction="right", prompt_name=None, normalize=True,
            dimensions=req.dimensions, t=t, disconnected=self._disconnect_waiter(request),
        )
        self._done("embed", len(req.inputs), t)
        as_b64 = getattr(req, "encoding_format", "float") == "base64"
        data_out = [
            {
                "object": "embedding",
                "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode() if as_b64 else row,
                "index": i,
            }
            for i, row in enumerate(matrix)
        ]
        usage = {"prompt_tokens": t.tokens, "total_tokens": t.tokens}
        return {"object": "list", "data": data_out, "model": self.model_name, "usage": usage}, (
            "batch" if req.batch else "single"
        )

    async def h_rerank(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_rerank(data)
        scores = await self.service.rerank(
            req.query, req.texts, truncate=req.truncate, direction=req.direction, raw_scores=req.raw_scores, t=t,
            disconnected=self._disconnect_waiter(request),
        )
        self._done("predict", len(req.texts), t)
        ranks = []
        for i, s in ranked(scores):
            rank: dict[str, Any] = {"index": i, "score": s}
            if req.return_text:
                rank["text"] = req.texts[i]
            ranks.append(rank)
        return ranks, "batch"

    async def h_predict(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_predict(data)
        rows = await self.service.predict(
            req.inputs, truncate=req.truncate, direction=req.direction, raw_scores=req.raw_scores, t=t,
            disconnected=self._disconnect_waiter(request),
        )
        self._done("predict", len(req.inputs), t)
        out = [[{"score": s, "label": label} for label, s in row] for row in rows]
        return (out if req.batch else out[0]), ("batch" if req.batch else "single")

    async def h_similarity(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_similarity(data)
        scores = await self.service.similarity(
            req.source, req.sentences, truncate=req.truncate, direction=req.direction, prompt_name=req.prompt_name,
            t=t, disconnected=self._disconnect_waiter(request),
        )
        self._done("embed", len(req.sentences) + 1, t)
        return scores, "batch"

    async def h_tokenize(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_tokenize(data)
        tokens = await self.service.tokenize(
            req.inputs, add_special_tokens=req.add_special_tokens, prompt_name=req.prompt_name
        )
        return tokens, "batch"

    async def h_decode(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        req = schemas.parse_decode(data)
        return await self.service.decode(req.ids, skip_special_tokens=req.skip_special_tokens), "batch"

    async def h_default(self, data: Any, request: Request, t: Timings) -> tuple[Any, str]:
        """POST / and /invocations: the model type decides, as in TEI."""
        kind = self.engine.spec.kind
        if kind == "reranker" and isinstance(data, dict) and "query" in data:
            return await self.h_rerank(data, request, t)
        if kind in ("reranker", "classifier"):
            return await self.h_predict(data, request, t)
        return await self.h_embed(data, request, t)

    # ---- plain routes --------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        healthy = self.batcher.healthy or await loop.run_in_executor(None, self.batcher.health_check)
        if healthy:
            return Response(status_code=200)
        return json_response({"error": "unhealthy", "error_type": "Unhealthy"}, 503)

    def info_body(self) -> dict[str, Any]:
        spec, cfg = self.engine.spec, self.config
        if spec.kind == "embedding":
            model_type: dict[str, Any] = {"embedding": {"pooling": spec.pooling}}
        else:
            label2id = {v: int(k) for k, v in spec.id2label.items()}
            model_type = {spec.kind: {"id2label": spec.id2label, "label2id": label2id}}
        return {
            "model_id": public_model_id(cfg.model_id),
            "model_sha": cfg.revision,
            "model_dtype": spec.dtype,
            "served_model_name": self.model_name,
            "model_type": model_type,
            "max_concurrent_requests": cfg.max_concurrent_requests,
            "max_input_length": spec.max_input_length,
            "max_batch_tokens": cfg.max_batch_tokens,
            "max_batch_requests": self.max_batch_requests,
            "max_client_batch_size": cfg.max_client_batch_size,
            "auto_truncate": cfg.auto_truncate,
            "tokenization_workers": self.tokenization_workers,
            "version": TEI_API_VERSION,
            "sha": None,
            "docker_label": None,
            # Beyond TEI: what this runtime adds; TEI clients ignore unknown fields.
            "fallback_worker": {
                "version": __version__,
                "tei_api_version": TEI_API_VERSION,
                "device": spec.device,
                "engine": spec.engine,
                "forward_workers": self.batcher.forward_workers,
                "sparse_embeddings": spec.sparse,
                "unpadded": spec.unpadded,
                "rerank_mode": cfg.rerank_mode if spec.kind == "embedding" else "cross-encoder",
            },
        }

    async def info(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(status_code=401)
        return json_response(self.info_body())

    async def metrics_route(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        spec = resources.files("fallback_worker").joinpath("data/openapi.json").read_bytes()
        return Response(spec, media_type="application/json")

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(resources.files("fallback_worker").joinpath("data/docs.html").read_text())

    # ---- assembly ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            # Graceful: uvicorn has stopped taking requests and waited for open ones; drain the queue.
            await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
            self.service.executor.shutdown(wait=False)
            self.service.tools_executor.shutdown(wait=False)

    def build(self) -> Starlette:
        def post(path: str, handler: Handler, *, openai: bool = False) -> Route:
            return Route(path, self.endpoint(handler, openai=openai), methods=["POST"])

        default = self.endpoint(self.h_default)

        async def root(request: Request) -> Response:
            # GET / is the health probe, POST / the model's default route. One Route for both, so
            # that any other method gets a 405 whose `Allow` names both.
            return await (self.health(request) if request.method in ("GET", "HEAD") else default(request))

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/", root, methods=["GET", "POST"]),
            Route("/ping", self.health, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/docs", self.docs, methods=["GET"]),
            Route("/api-doc/openapi.json", self.openapi, methods=["GET"]),
            post("/embed", self.h_embed),
            post("/embed_all", self.h_embed_all),
            post("/embed_sparse", self.h_embed_sparse),
            post("/rerank", self.h_rerank),
            post("/predict", self.h_predict),
            post("/similarity", self.h_similarity),
            post("/tokenize", self.h_tokenize),
            post("/decode", self.h_decode),
            post("/v1/embeddings", self.h_openai, openai=True),
            post("/embeddings", self.h_openai, openai=True),
            post("/invocations", self.h_default),
        ]
        origins = self.config.cors_allow_origin or ["*"]
        middleware = [
            Middleware(
                CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["content-type"]
            )
        ]
        return Starlette(routes=routes, middleware=middleware, lifespan=self.lifespan)


def create_app(engine: BaseEngine, config: WorkerConfig, *, tokenization_workers: int = 1) -> Starlette:
    """The ASGI app for a loaded engine; the batcher starts and stops with the app's lifespan."""
    return App(engine, config, tokenization_workers=tokenization_workers).build()
