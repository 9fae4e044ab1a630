"""The gateway's ASGI app: authenticate, pick a deployment, admit, proxy, count.

    create_app(profile, plan, keys=..., registry=..., clock=...) -> Starlette

One request, in order:
1. `Authorization: Bearer <key>` -> tenant (401 when missing or unknown).
2. The body: JSON only, size- and time-capped while it streams (body.py).
3. Route + `model` (body field, `X-Model` header or `?model=`) -> deployment (403/404/400); at
   most `gateway.max_request_inputs` inputs (413).
4. Rate and token budgets (429 + Retry-After); then, per upstream request (a call above the
   deployment's `max_client_batch_size` is split), room in the deployment's pool counted in
   requests and input permits, waiting in priority order (dispatch.py, qos.py).
5. Proxy to the replica with the fewest inputs in flight, retrying once elsewhere on a dead or
   cut connection, a per-try timeout, 503 or 429 (proxy.py).
6. Merge split answers; reconcile the token estimate with the upstream's `x-compute-tokens`;
   record metrics.

The gateway's configuration (`GatewayConfig`) is replaced whole on reload; in-flight requests
keep the one they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from tei_manager.core.models import Profile
from tei_manager.core.plan import Plan
from tei_manager.gateway import adapters
from tei_manager.gateway.background import cancel_and_wait
from tei_manager.gateway.body import BodyTimedOut, read_json
from tei_manager.gateway.config import GatewayConfig, build_config
from tei_manager.gateway.dispatch import Dispatcher, Part
from tei_manager.gateway.errors import (
    BadUpstream,
    InvalidBody,
    Overloaded,
    PayloadTooLarge,
    RequestRefused,
    Unauthorized,
    Unhealthy,
    UnsupportedMediaType,
    UpstreamTimedOut,
    error_response,
)
from tei_manager.gateway.events import RestartFeed
from tei_manager.gateway.keys import bearer_token
from tei_manager.gateway.prober import Prober
from tei_manager.gateway.proxy import JSON_HEADERS, Forwarded, NoReplica, Proxy
from tei_manager.gateway.proxy import UpstreamTimedOut as ProxyTimedOut
from tei_manager.gateway.qos import AdmissionController, Ticket
from tei_manager.gateway.quota_store import QuotaStoreUnavailable, open_quota_store
from tei_manager.gateway.reload import Reloader
from tei_manager.gateway.routing import Balancer, Route, RouteTask
from tei_manager.gateway.upstream import ConnectionPool, UpstreamResponse
from tei_manager.instance_keys import bearer
from tei_manager.metrics import GatewayMetrics

log = logging.getLogger("tei_manager.gateway")

BODY_ERRORS = (InvalidBody, PayloadTooLarge, UnsupportedMediaType, BodyTimedOut)
CLIENT_CLOSED = 499  # nginx's status for "client closed the request"; never sent, only counted
OPEN_TENANT = "-"  # metrics label for requests to a gateway without tenants
# Headers of the upstream answer that clients see: TEI's timing and token counts.
PASSED_HEADERS = (
    "x-compute-type", "x-compute-time", "x-compute-characters", "x-compute-tokens",
    "x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time",
)
# A replica is taken out after this many failed probes in a row (a busy runtime can be slow to
# answer /health, which queues behind its batches); a refused connection during a request takes
# it out at once.
PROBE_FAILURES_TO_DOWN = 2


@dataclass(frozen=True)
class Endpoint:
    path: str
    task: RouteTask
    upstream_path: str
    shape: str = "tei"  # "tei": pass through; "cohere": translate to/from TEI /rerank


ENDPOINTS = (
    Endpoint("/embed", "embed", "/embed"),
    Endpoint("/embed_all", "embed", "/embed_all"),
    Endpoint("/embed_sparse", "embed", "/embed_sparse"),
    Endpoint("/rerank", "rerank", "/rerank"),
    Endpoint("/tokenize", "any", "/tokenize"),
    Endpoint("/decode", "any", "/decode"),
    Endpoint("/v1/embeddings", "embed", "/v1/embeddings"),
    Endpoint("/embeddings", "embed", "/v1/embeddings"),
    Endpoint("/v1/rerank", "rerank", "/rerank", "cohere"),
    Endpoint("/v2/rerank", "rerank", "/rerank", "cohere"),
)


class Gateway:
    """State shared by all requests of one app (one event loop)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        profile: str,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
        reloader: Reloader | None,
        probe_interval_s: float,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.qos = AdmissionController(clock)
        self.quotas = open_quota_store(config.settings.quota_store, profile=profile, admission=self.qos)
        self.balancer = Balancer()
        self.pool = ConnectionPool()
        self._upstream_headers: dict[str, dict[str, str]] = {}
        self.proxy = Proxy(self.pool, self.balancer, on_health=self.observe, on_retry=self._retried,
                           headers_for=self._headers_for)
        self.dispatcher = Dispatcher(self.qos, self.proxy, on_admitted=self._admitted, on_pool_change=self._pool_gauges)
        self.prober = Prober(self.pool, self._all_urls, self._probed, interval_s=probe_interval_s)
        self.reloader = reloader
        self.config = config
        self.apply(config)

    # ---- configuration ---------------------------------------------------------------------------
    def apply(self, config: GatewayConfig) -> None:
        """Switch to a new profile version; requests in flight finish on the old routes."""
        old = self.config
        # Each protected instance's internal key, derived once per profile version, never logged.
        self._upstream_headers = {url: {**JSON_HEADERS, **bearer(config.profile, name)}
                                  for url, name in config.protected.items()}
        self.config = config
        for tenant, limits in config.tenants.items():
            self.qos.configure_tenant(tenant, limits)
        self.qos.remove_tenants_except(set(config.tenants) | {OPEN_TENANT})
        for route in config.table.routes:
            self._size_pool(route)
            # Hand-made routes (library use) may leave replica_names empty: no per-instance metrics then.
            for url, name in zip(route.replicas, route.replica_names, strict=False):
                self.metrics.instance_up(
                    instance=name, model=route.model_key, tenant=route.tenant, up=self.balancer.state(url).healthy
                )
        if old is not config:
            current = {(n, r.model_key, r.tenant) for r in config.table.routes for n in r.replica_names}
            for r in old.table.routes:
                for name in r.replica_names:
                    if (name, r.model_key, r.tenant) not in current:
                        self.metrics.forget_instance(instance=name, model=r.model_key, tenant=r.tenant)
        self.balancer.forget_except(set(self._all_urls()))

    def _size_pool(self, route: Route) -> None:
        """A deployment's pool holds what its healthy replicas can take, in requests and in inputs."""
        self.qos.configure_pool(route.deployment, self.balancer.capacity(route), self.balancer.input_capacity(route))

    def _headers_for(self, url: str) -> Mapping[str, str]:
        return self._upstream_headers.get(url, JSON_HEADERS)

    def _all_urls(self) -> Iterable[str]:
        return [u for r in self.config.table.routes for u in r.replicas]

    def _routes_with(self, url: str) -> list[Route]:
        return [r for r in self.config.table.routes if url in r.replicas]

    # ---- health ------------------------------------------------------------------------------
    def observe(self, url: str, healthy: bool) -> None:
        """A health observation from a request or a probe."""
        if not self.balancer.mark(url, healthy):
            return
        name = self.config.instance_names.get(url, url)
        log.warning("instance %s is %s", name, "back" if healthy else "out of rotation")
        if not healthy:
            # Requests still waiting on it (hung, or stopped) are cut now and retried elsewhere.
            self.pool.abort(url)
        for route in self._routes_with(url):
            self._size_pool(route)
            self.metrics.instance_up(instance=name, model=route.model_key, tenant=route.tenant, up=healthy)

    def _probed(self, url: str, ok: bool) -> None:
        state = self.balancer.state(url)
        if ok or not state.healthy:
            self.observe(url, ok)
        elif state.failures + 1 >= PROBE_FAILURES_TO_DOWN:
            self.observe(url, False)
        else:
            state.failures += 1

    def _retried(self, route: Route, failed_url: str) -> None:
        self.metrics.retried(model=route.model_key, instance=self.config.instance_names.get(failed_url, failed_url))

    # ---- requests ----------------------------------------------------------------------------
    def authenticate(self, request: Request, config: GatewayConfig) -> str | None:
        if config.open:
            return None
        key = bearer_token(request.headers.get("authorization"))
        if key is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        tenant = config.keys.tenant_for(key)
        if tenant is None:
            raise Unauthorized("invalid API key")
        return tenant

    async def handle(self, request: Request, endpoint: Endpoint) -> Response:
        started = self.clock()
        config = self.config
        tenant_label, model_label, instance = OPEN_TENANT, "-", ""
        try:
            tenant = self.authenticate(request, config)
            tenant_label = tenant or OPEN_TENANT
            raw, body = await read_json(request)
            route = config.table.resolve(tenant, endpoint.task, _model_name(request, body))
            model_label = route.model_key
            response, instance = await self._serve(endpoint, config, tenant_label, route, raw, body)
        except ClientDisconnect:
            # The client went away while sending its body: its business, not a gateway error.
            response = Response(b"", status_code=CLIENT_CLOSED)
        except RequestRefused as exc:
            if not isinstance(exc, BODY_ERRORS):  # a broken body is the client's mistake, not a refusal
                self.metrics.rejected(tenant=tenant_label, model=model_label, reason=exc.reason)
            response = exc.response()
            if isinstance(exc, (BodyTimedOut, PayloadTooLarge)):
                # The rest of the body was never read: close, or uvicorn keeps the socket (and its
                # slow or endless sender) until its keep-alive timer runs out.
                response.headers["connection"] = "close"
        except Exception:  # never a stack trace to the client
            log.exception("gateway error on %s", endpoint.path)
            response = error_response(500, "Backend", "internal gateway error; see the gateway log")
        self.metrics.request_done(
            tenant=tenant_label, model=model_label, route=endpoint.path, instance=instance,
            status=response.status_code, seconds=self.clock() - started,
        )
        return response

    async def _serve(
        self, endpoint: Endpoint, config: GatewayConfig, tenant: str, route: Route, raw: bytes, body: Any
    ) -> tuple[Response, str]:
        cohere: tuple[list[str], int | None, bool] | None = None
        if endpoint.shape == "cohere":
            tei_body, texts, top_n, return_documents = adapters.cohere_to_tei(body)
            raw = orjson.dumps(tei_body)
            body = tei_body
            cohere = (texts, top_n, return_documents)
        path = endpoint.upstream_path
        inputs = adapters.count_inputs(path, body)
        limit = config.settings.max_request_inputs
        if inputs > limit:
            raise PayloadTooLarge(
                f"{inputs} inputs in one request; this gateway takes at most {limit}: send them in several "
                "requests, or raise `gateway.max_request_inputs` in the profile"
            )
        if self.balancer.healthy_count(route) == 0:
            raise Unhealthy(f"no healthy instance of '{route.model_key}'")

        estimate = adapters.estimate_tokens(endpoint.task, body)
        limits = self.qos.limits(tenant)
        try:
            rejection = await self.quotas.take(tenant, limits, estimate)
        except QuotaStoreUnavailable as exc:
            raise Unhealthy(f"{exc}; this gateway refuses requests until it answers "
                            "(gateway.quota_store.on_unavailable: closed)") from None
        if rejection is not None:
            raise Overloaded(rejection.message, retry_after_s=rejection.retry_after_s, reason=rejection.reason)
        split = adapters.split_inputs(path, body, route.max_client_batch_size)
        parts = [Part(b, n) for b, n in split] if split else [Part(raw, adapters.count_permits(path, body))]
        timeout_s = config.settings.upstream_timeout_s
        charged = estimate
        try:
            done = await self.dispatcher.run(
                tenant, route, path, parts, max_wait_s=self.qos.limits(tenant).max_wait_ms / 1000, timeout_s=timeout_s
            )
            forwarded = _merge(done, path, route.max_client_batch_size, complete=len(done) == len(parts))
            upstream = forwarded.response
            counted = upstream.headers.get("x-compute-tokens")
            if counted is not None and counted.isdigit():
                charged = int(counted)
            elif upstream.status >= 400:
                charged = 0  # refused before it ran: nothing to pay for
        except NoReplica as exc:
            charged = 0
            raise Unhealthy(f"no healthy instance of '{route.model_key}' answered") from exc
        except ProxyTimedOut as exc:
            raise UpstreamTimedOut(f"'{route.model_key}' did not answer within {timeout_s:g} s") from exc
        except RequestRefused:
            charged = 0
            raise
        finally:
            await self.quotas.reconcile(tenant, limits, estimate, charged)
            self.metrics.tokens(tenant=tenant, model=route.model_key, count=charged)

        instance = config.instance_names.get(forwarded.url, forwarded.url)
        headers = {h: upstream.headers[h] for h in PASSED_HEADERS if h in upstream.headers}
        headers["x-tei-manager-instance"] = instance
        if cohere is not None and upstream.status == 200:
            texts, top_n, return_documents = cohere
            answer = adapters.tei_to_cohere(
                upstream.body, texts, top_n, return_documents, route.served_model_name,
                int(counted) if counted and counted.isdigit() else None,
            )
            return JSONResponse(answer, headers=headers), instance
        media = upstream.headers.get("content-type", "application/json")
        return Response(upstream.body, status_code=upstream.status, media_type=media, headers=headers), instance

    def _admitted(self, ticket: Ticket, route: Route) -> None:
        limits = self.qos.limits(ticket.tenant)
        self.metrics.queue_wait(
            tenant=ticket.tenant, model=route.model_key, priority=limits.priority, seconds=ticket.waited_s
        )
        self._pool_gauges(route)

    def _pool_gauges(self, route: Route) -> None:
        self.metrics.pool_load(
            model=route.model_key,
            in_flight=self.qos.in_flight(route.deployment),
            waiting=self.qos.waiting(route.deployment),
        )

    def models(self, request: Request) -> Response:
        config = self.config
        try:
            tenant = self.authenticate(request, config)
        except RequestRefused as exc:
            return exc.response()
        data = [
            {
                "id": r.model_key,
                "object": "model",
                "owned_by": r.tenant,
                "hub_id": r.hub_id,
                "deployment": r.deployment,
                "tasks": sorted(r.tasks),
                "shared": r.shared,
            }
            for r in config.table.visible(tenant)
        ]
        return JSONResponse({"object": "list", "data": data})


def _merge(done: list[Forwarded], path: str, size: int, *, complete: bool) -> Forwarded:
    """One answer from the answers of a call's parts: the first refusal as it is, else the merge."""
    failed = next((p for p in done if p.response.status != 200), None)
    if failed is not None or len(done) == 1:
        return failed or done[0]
    if not complete:  # pragma: no cover - run() only stops early after a refusal
        raise BadUpstream("a split request stopped without an answer for every part")
    tokens = [p.response.headers.get("x-compute-tokens", "") for p in done]
    headers = {"content-type": "application/json"}
    if all(t.isdigit() for t in tokens):
        headers["x-compute-tokens"] = str(sum(int(t) for t in tokens))
    merged = UpstreamResponse(200, headers, adapters.merger(path)([p.response.body for p in done], size))
    return Forwarded(merged, done[0].url, retried=any(p.retried for p in done))


def _model_name(request: Request, body: Any) -> str | None:
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str) and model:
        return model
    return request.headers.get("x-model") or request.query_params.get("model") or None


def create_app(
    profile: Profile,
    plan: Plan,
    *,
    keys: Mapping[str, Iterable[str]],
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
    instance_concurrency: int | None = None,
    reload: Callable[[], tuple[Profile, Plan, Mapping[str, Iterable[str]]]] | None = None,
    watch_path: str | None = None,
    watch_interval_s: float = 1.0,
    probe_interval_s: float = 2.0,
    gpu_metrics: bool = True,
    follow_supervisor: bool = True,
) -> Starlette:
    """The gateway for one profile.

    `keys`: tenant -> plain API keys (`tei_manager.profiles.resolve_secrets`), hashed at once.
    `reload`: returns a fresh (profile, plan, keys); called when `watch_path` changes or on SIGHUP.
    `instance_concurrency`: requests one replica runs at once (see config.instance_capacity).
    `follow_supervisor`: count restarts from the supervisor's event log (tei_manager.state).
    """
    metrics = GatewayMetrics(registry if registry is not None else CollectorRegistry(), gpu_collector=gpu_metrics)

    def build() -> GatewayConfig:
        assert reload is not None
        new_profile, new_plan, new_keys = reload()
        return build_config(new_profile, new_plan, new_keys, instance_concurrency=instance_concurrency)

    reloader = None
    if reload is not None:
        reloader = Reloader(build, lambda cfg: gateway.apply(cfg), metrics.reloaded,
                            path=watch_path, interval_s=watch_interval_s)
    gateway = Gateway(
        build_config(profile, plan, keys, instance_concurrency=instance_concurrency),
        profile=profile.name, metrics=metrics, clock=clock, reloader=reloader, probe_interval_s=probe_interval_s,
    )

    def endpoint(ep: Endpoint) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            return await gateway.handle(request, ep)

        return run

    async def health(request: Request) -> Response:
        return Response(b"", status_code=200)

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def models(request: Request) -> Response:
        return gateway.models(request)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "NotFound" if exc.status_code == 404 else "Validation"
        # Starlette's 405 carries `Allow`; keep it (and any other header it set).
        return error_response(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}",
                              dict(exc.headers or {}))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.prober.probe_all()  # start with dead instances already out of rotation
        gateway.prober.start()
        if reloader is not None:
            reloader.start()
        feed_task = None
        if follow_supervisor:
            feed = RestartFeed(profile.name, metrics)
            feed_task = asyncio.get_running_loop().create_task(feed.run(max(probe_interval_s, 5.0)))
        try:
            yield
        finally:
            await cancel_and_wait(feed_task)
            if reloader is not None:
                await reloader.stop()
            await gateway.prober.stop()
            await gateway.pool.aclose()
            await gateway.quotas.close()

    routes = [HttpRoute(ep.path, endpoint(ep), methods=["POST"]) for ep in ENDPOINTS]
    routes += [
        HttpRoute("/health", health, methods=["GET"]),
        HttpRoute("/metrics", metrics_page, methods=["GET"]),
        HttpRoute("/v1/models", models, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.gateway = gateway
    return app
