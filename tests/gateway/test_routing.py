"""Model resolution and replica choice (tei_manager.gateway.routing is pure)."""

from __future__ import annotations

import pytest

from tei_manager.gateway.keys import KeyRing, bearer_token
from tei_manager.gateway.routing import Balancer, Route, RouteTable, RoutingError


def route(deployment: str, tenant: str, model_key: str, tasks: set[str], *, shared: bool = False,
          replicas: tuple[str, ...] = ("http://a",)) -> Route:
    return Route(deployment, tenant, shared, model_key, f"org/{model_key}", f"org/{model_key}",
                 frozenset(tasks), replicas, tuple(f"{deployment}-{i}" for i in range(len(replicas))), 4)


TABLE = RouteTable([
    route("fin-m3", "finance", "bge-m3", {"embed"}),
    route("fin-rr", "finance", "reranker", {"rerank"}),
    route("hr-m3", "hr", "bge-m3", {"embed"}),
    route("common", "platform", "e5", {"embed"}, shared=True),
])


def test_the_only_fitting_deployment_needs_no_name() -> None:
    assert TABLE.resolve("finance", "rerank", None).deployment == "fin-rr"
    assert TABLE.resolve("hr", "embed", None).deployment == "hr-m3"  # own beats shared


def test_any_name_of_a_model_selects_it() -> None:
    for name in ("bge-m3", "org/bge-m3", "fin-m3"):
        assert TABLE.resolve("finance", "embed", name).deployment == "fin-m3"
    assert TABLE.resolve("hr", "embed", "e5").deployment == "common"


def test_other_tenants_models_are_forbidden_and_unknown_ones_not_found() -> None:
    with pytest.raises(RoutingError) as forbidden:
        TABLE.resolve("hr", "rerank", "reranker")
    assert forbidden.value.status == 403
    with pytest.raises(RoutingError) as missing:
        TABLE.resolve("hr", "embed", "gpt")
    assert missing.value.status == 404 and "bge-m3" in missing.value.message and "reranker" not in missing.value.message


def test_task_mismatch_and_ambiguity_are_400() -> None:
    with pytest.raises(RoutingError) as wrong:
        TABLE.resolve("finance", "rerank", "bge-m3")
    assert wrong.value.status == 400
    with pytest.raises(RoutingError) as ambiguous:
        TABLE.resolve("finance", "any", None)  # /tokenize: two own deployments
    assert ambiguous.value.status == 400 and "fin-m3" in ambiguous.value.message and "fin-rr" in ambiguous.value.message


def test_open_gateway_sees_everything() -> None:
    assert TABLE.resolve(None, "rerank", None).deployment == "fin-rr"


def test_least_in_flight_and_health() -> None:
    r = route("d", "t", "m", {"embed"}, replicas=("http://a", "http://b"))
    balancer = Balancer()
    first = balancer.pick(r)
    balancer.started(first)
    second = balancer.pick(r)
    assert second != first
    balancer.started(second)
    balancer.finished(first)
    assert balancer.pick(r) == first
    balancer.mark(first, False)
    assert balancer.pick(r) == second
    assert balancer.pick(r, exclude=[second]) is None
    assert balancer.capacity(r) == 4  # one healthy replica x 4
    assert balancer.mark(first, True) is True
    assert balancer.capacity(r) == 8


def test_keyring_maps_keys_to_tenants_without_storing_them() -> None:
    ring = KeyRing({"a": ["k1", "k2"], "b": ["k3"]})
    assert ring.tenant_for("k2") == "a" and ring.tenant_for("k3") == "b" and ring.tenant_for("k4") is None
    assert "k1" not in repr(ring.__dict__)
    with pytest.raises(ValueError):
        KeyRing({"a": ["same"], "b": ["same"]})
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("bearer abc") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None


def test_a_model_deployed_twice_goes_to_the_deployment_planned_for_the_route() -> None:
    """The quickstart serves one embedding model twice: for /embed and, as a bi-encoder, for /rerank.

    Naming the model on an embeddings route must reach the embed deployment, not be ambiguous.
    """
    embed = Route("demo-embed", "demo", False, "minilm", "org/minilm", "org/minilm",
                  frozenset({"embed"}), ("http://a",), ("demo-embed",), 4, task="embed")
    rerank = Route("demo-rerank", "demo", False, "minilm", "org/minilm", "org/minilm",
                   frozenset({"embed", "rerank"}), ("http://b",), ("demo-rerank",), 4, task="rerank")
    table = RouteTable([embed, rerank])
    assert table.resolve("demo", "embed", "org/minilm").deployment == "demo-embed"
    assert table.resolve("demo", "embed", None).deployment == "demo-embed"
    assert table.resolve("demo", "rerank", "minilm").deployment == "demo-rerank"
