"""Which deployment a request goes to, and which replica of it.  Pure: no I/O.

Model selection (documented in docs/gateway.md):

* A request names its model with the body's `model` field (OpenAI / Cohere routes), the
  `X-Model` header or the `?model=` query parameter (any route).  A name matches a deployment's
  profile model key, hub id, served model name or deployment name.
* Without a name, the tenant's only deployment that serves the route's task is used (its own
  deployments first, then `shared: true` ones).  Several candidates -> 400 listing them.
* A name that exists but belongs to another tenant (and is not shared) -> 403; a name that
  exists nowhere -> 404.  Both list the names this tenant may use.

Replica selection: least inputs in flight among healthy replicas, ties broken round-robin,
optionally excluding replicas that just failed (the one retry goes elsewhere).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from tei_manager.gateway.errors import RequestRefused

RouteTask = Literal["embed", "rerank", "any"]


class RoutingError(RequestRefused):
    """A request that cannot be routed; carries the HTTP status and TEI-style error type."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        reason = {401: "unauthorized", 403: "forbidden", 404: "unknown_model"}.get(status, "bad_request")
        super().__init__(message, status=status, reason=reason)
        self.error_type = error_type


@dataclass(frozen=True)
class Route:
    """One deployment as the gateway sees it: who may call it, what it serves, where it runs."""

    deployment: str
    tenant: str
    shared: bool
    model_key: str
    hub_id: str
    served_model_name: str
    tasks: frozenset[str]
    replicas: tuple[str, ...]  # base URLs, e.g. http://127.0.0.1:8081
    replica_names: tuple[str, ...] = ()  # instance names, same order (metrics labels)
    capacity_per_replica: int | None = None  # None: the gateway does not hold requests back
    max_client_batch_size: int = 32  # inputs per upstream request; bigger calls are split
    # Input permits of one replica (the runtime's max_concurrent_requests: TEI and the fallback
    # worker take one per input and answer 429 when none is free).  None: not known, not counted.
    inputs_per_replica: int | None = None
    task: str = ""  # what the deployment was planned for; `tasks` may add what its model can also do

    @property
    def names(self) -> frozenset[str]:
        return frozenset({self.model_key, self.hub_id, self.served_model_name, self.deployment})

    def visible_to(self, tenant: str | None) -> bool:
        # tenant None = open gateway (profile without tenants): everything is visible.
        return tenant is None or self.tenant == tenant or self.shared


class RouteTable:
    """Every route of one profile version; rebuilt (never mutated) on reload."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)

    def visible(self, tenant: str | None) -> list[Route]:
        return [r for r in self.routes if r.visible_to(tenant)]

    def resolve(self, tenant: str | None, task: RouteTask, model: str | None) -> Route:
        visible = self.visible(tenant)
        if model:
            named = [r for r in self.routes if model in r.names]
            if not named:
                raise RoutingError(404, "ModelNotFound", f"model '{model}' is not served here; {_choices(visible)}")
            allowed = [r for r in named if r.visible_to(tenant)]
            if not allowed:
                raise RoutingError(403, "Forbidden", f"this API key may not use model '{model}'; {_choices(visible)}")
            fitting = [r for r in allowed if _serves(r, task)]
            if not fitting:
                served = sorted({t for r in allowed for t in r.tasks})
                raise RoutingError(
                    400, "Validation", f"model '{model}' does not serve {task} (it serves {', '.join(served)})"
                )
            return _one(_planned_for(fitting, task), tenant, f"model '{model}'")
        fitting = [r for r in visible if _serves(r, task)]
        if not fitting:
            raise RoutingError(404, "ModelNotFound", f"no model that serves {task} is available; {_choices(visible)}")
        return _one(_planned_for(fitting, task), tenant, f"{task} requests")


def _planned_for(candidates: list[Route], task: RouteTask) -> list[Route]:
    """Deployments planned for the task win over ones that merely can do it.

    An embedding model deployed for bi-encoder reranking can embed too; an /embed call naming that
    model belongs on its embed deployment, not on the reranker's.
    """
    planned = [r for r in candidates if r.task == task]
    return planned or candidates


def _serves(route: Route, task: RouteTask) -> bool:
    return task == "any" or task in route.tasks


def _one(candidates: list[Route], tenant: str | None, what: str) -> Route:
    own = [r for r in candidates if r.tenant == tenant]
    pick = own or candidates
    if len(pick) == 1:
        return pick[0]
    names = ", ".join(sorted(f"'{r.deployment}' ({r.model_key})" for r in pick))
    raise RoutingError(
        400,
        "Validation",
        f"several deployments can take {what}: {names}; name one with the `model` field, "
        "the X-Model header or the ?model= query parameter",
    )


def _choices(routes: list[Route]) -> str:
    if not routes:
        return "this API key has no models"
    return "models for this API key: " + ", ".join(sorted({r.model_key for r in routes}))


@dataclass
class ReplicaState:
    url: str
    in_flight: int = 0  # inputs in flight (a request of n inputs counts n)
    healthy: bool = True
    failures: int = 0  # consecutive failed probes or requests


@dataclass
class Balancer:
    """In-flight counts and health per replica URL; survives reloads (keyed by URL)."""

    replicas: dict[str, ReplicaState] = field(default_factory=dict)
    _tick: itertools.count[int] = field(default_factory=itertools.count)

    def state(self, url: str) -> ReplicaState:
        if url not in self.replicas:
            self.replicas[url] = ReplicaState(url)
        return self.replicas[url]

    def pick(self, route: Route, exclude: Iterable[str] = ()) -> str | None:
        """The healthy replica with the fewest inputs in flight, or None."""
        skip = set(exclude)
        candidates = [self.state(u) for u in route.replicas if u not in skip and self.state(u).healthy]
        if not candidates:
            return None
        low = min(c.in_flight for c in candidates)
        tied = [c for c in candidates if c.in_flight == low]
        url: str = tied[next(self._tick) % len(tied)].url
        return url

    def started(self, url: str, inputs: int = 1) -> None:
        self.state(url).in_flight += inputs

    def finished(self, url: str, inputs: int = 1) -> None:
        self.state(url).in_flight -= inputs

    def mark(self, url: str, healthy: bool) -> bool:
        """Record a health observation; True when the replica changed state."""
        state = self.state(url)
        state.failures = 0 if healthy else state.failures + 1
        changed = state.healthy != healthy
        state.healthy = healthy
        return changed

    def healthy_count(self, route: Route) -> int:
        return sum(1 for u in route.replicas if self.state(u).healthy)

    def capacity(self, route: Route) -> int | None:
        """Pool capacity for admission: healthy replicas x per-replica capacity."""
        if route.capacity_per_replica is None:
            return None
        return self.healthy_count(route) * route.capacity_per_replica

    def input_capacity(self, route: Route) -> int | None:
        """Input permits for admission: healthy replicas x each one's permits."""
        if route.inputs_per_replica is None:
            return None
        return self.healthy_count(route) * route.inputs_per_replica

    def forget_except(self, urls: set[str]) -> None:
        for url in [u for u, s in self.replicas.items() if u not in urls and s.in_flight == 0]:
            del self.replicas[url]
