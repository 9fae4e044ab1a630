"""Admission rules with a fake clock (tei_manager.gateway.qos is pure)."""

from __future__ import annotations

from tei_manager.gateway.qos import AdmissionController, TenantLimits


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(**tenants: TenantLimits) -> tuple[AdmissionController, FakeClock]:
    clock = FakeClock()
    qos = AdmissionController(clock)
    for name, limits in tenants.items():
        qos.configure_tenant(name, limits)
    return qos, clock


def test_waiters_are_admitted_high_before_normal_before_low() -> None:
    qos, _ = controller(hi=TenantLimits(priority="high"), mid=TenantLimits(), lo=TenantLimits(priority="low"))
    qos.configure_pool("m", 1)
    running = qos.acquire("lo", "m")
    assert running.state == "admitted"
    order: list[str] = []
    waiting = []
    for tenant in ["lo", "lo", "mid", "hi", "lo", "hi"]:
        ticket = qos.acquire(tenant, "m")
        ticket.waker = lambda t=tenant: order.append(t)
        waiting.append(ticket)
    assert all(t.state == "waiting" for t in waiting)
    ticket = running
    for _ in waiting:
        qos.release(ticket)
        ticket = next(t for t in waiting if t.state == "admitted")
    assert order == ["hi", "hi", "mid", "lo", "lo", "lo"]


def test_a_newcomer_does_not_overtake_when_the_pool_is_full() -> None:
    qos, _ = controller(a=TenantLimits(priority="high"))
    qos.configure_pool("m", 2)
    first, second = qos.acquire("a", "m"), qos.acquire("a", "m")
    third = qos.acquire("a", "m")
    assert (first.state, second.state, third.state) == ("admitted", "admitted", "waiting")
    qos.release(first)
    assert third.state == "admitted" and qos.in_flight("m") == 2


def test_unlimited_pool_admits_everything() -> None:
    qos, _ = controller()
    qos.configure_pool("m", None)
    assert all(qos.acquire("x", "m").state == "admitted" for _ in range(100))


def test_tenant_concurrency_cap_does_not_block_other_tenants() -> None:
    qos, _ = controller(a=TenantLimits(max_concurrent=1, priority="high"), b=TenantLimits(priority="low"))
    qos.configure_pool("m", 3)
    qos.acquire("a", "m")
    blocked = qos.acquire("a", "m")
    other = qos.acquire("b", "m")
    assert blocked.state == "waiting"
    assert other.state == "admitted"  # a's cap is a's problem only


def test_cancelled_waiter_leaves_the_queue() -> None:
    qos, _ = controller()
    qos.configure_pool("m", 1)
    running = qos.acquire("a", "m")
    waiter = qos.acquire("a", "m")
    assert qos.cancel(waiter) is True
    assert qos.waiting() == 0
    qos.release(running)
    assert waiter.state == "cancelled" and qos.in_flight("m") == 0


def test_raising_capacity_admits_waiters() -> None:
    qos, _ = controller()
    qos.configure_pool("m", 0)
    waiter = qos.acquire("a", "m")
    assert waiter.state == "waiting"
    qos.configure_pool("m", 1)
    assert waiter.state == "admitted"


def test_request_rate_with_burst_and_retry_after() -> None:
    qos, clock = controller(a=TenantLimits(requests_per_second=2, burst=2))
    assert qos.check_rates("a", 1) is None
    assert qos.check_rates("a", 1) is None
    rejected = qos.check_rates("a", 1)
    assert rejected is not None and rejected.reason == "rate_limit"
    assert abs(rejected.retry_after_s - 0.5) < 1e-9 and rejected.retry_after_header == "1"
    clock.now += 0.5
    assert qos.check_rates("a", 1) is None


def test_token_budget_is_reserved_then_reconciled() -> None:
    qos, clock = controller(a=TenantLimits(tokens_per_minute=600))  # 10 tokens per second
    assert qos.check_rates("a", 100) is None
    qos.reconcile_tokens("a", estimated=100, actual=400)  # the upstream counted more: debt
    assert qos.token_level("a") == 200
    rejected = qos.check_rates("a", 300)
    assert rejected is not None and rejected.reason == "token_limit"
    assert abs(rejected.retry_after_s - 10.0) < 1e-9
    qos.reconcile_tokens("a", estimated=50, actual=0)  # refunds never exceed the budget
    clock.now += 10
    assert qos.check_rates("a", 300) is None


def test_a_request_larger_than_the_budget_passes_on_a_full_bucket() -> None:
    qos, _ = controller(a=TenantLimits(tokens_per_minute=100))
    assert qos.check_rates("a", 5000) is None
    assert qos.check_rates("a", 1) is not None  # deep in debt now


def test_rejections_take_nothing() -> None:
    qos, _ = controller(a=TenantLimits(requests_per_second=10, tokens_per_minute=60))
    assert qos.check_rates("a", 60) is None
    level_before = qos.token_level("a")
    assert qos.check_rates("a", 60) is not None
    assert qos.token_level("a") == level_before
    # the refused request did not spend a request token either: nine more fit in the burst of 20
    assert all(qos.check_rates("a", 0) is None for _ in range(19))


def test_reload_keeps_spent_budget_and_in_flight() -> None:
    qos, _ = controller(a=TenantLimits(tokens_per_minute=100))
    qos.configure_pool("m", 5)
    qos.acquire("a", "m")
    qos.check_rates("a", 100)
    qos.configure_tenant("a", TenantLimits(tokens_per_minute=200, priority="high"))
    assert qos.token_level("a") == 0  # editing the profile is not a free refill
    assert qos.tenant_in_flight("a") == 1
    assert qos.limits("a").priority == "high"


def test_input_permits_pace_multi_input_requests() -> None:
    qos, _ = controller(a=TenantLimits())
    qos.configure_pool("m", 32, inputs=64)  # 32 requests, but only 64 inputs, at once
    running = [qos.acquire("a", "m", inputs=16) for _ in range(4)]
    fifth = qos.acquire("a", "m", inputs=16)
    assert [t.state for t in running] == ["admitted"] * 4 and fifth.state == "waiting"
    assert qos.inputs_in_flight("m") == 64
    qos.release(running[0])
    assert fifth.state == "admitted"


def test_a_big_waiter_is_not_starved_by_small_newcomers() -> None:
    qos, _ = controller(a=TenantLimits())
    qos.configure_pool("m", None, inputs=16)
    first = qos.acquire("a", "m", inputs=10)
    big = qos.acquire("a", "m", inputs=16)
    small = qos.acquire("a", "m", inputs=1)  # would fit, but the big one came first
    assert (big.state, small.state) == ("waiting", "waiting")
    qos.release(first)
    assert big.state == "admitted" and small.state == "waiting"


def test_high_priority_inputs_go_before_waiting_low_priority_ones() -> None:
    qos, _ = controller(hi=TenantLimits(priority="high"), lo=TenantLimits(priority="low"))
    qos.configure_pool("m", None, inputs=16)
    running = qos.acquire("lo", "m", inputs=16)
    low = qos.acquire("lo", "m", inputs=16)
    high = qos.acquire("hi", "m", inputs=16)
    qos.release(running)
    assert (high.state, low.state) == ("admitted", "waiting")


def test_a_request_bigger_than_the_pool_runs_alone_instead_of_waiting_forever() -> None:
    qos, _ = controller(a=TenantLimits())
    qos.configure_pool("m", None, inputs=8)
    assert qos.acquire("a", "m", inputs=20).state == "admitted"
