"""Snapshots of what a user sees at 80x24: the overview with and without GPUs, and a plan that
does not fit its GPU.

Frames must not change between runs, so everything that would (the clock, ports the OS
hands out, pids) is injected.  This host has no GPU: the "with GPUs" frames get GPU facts
from `probe_host` (and, for the overview, the `status` rows of instances on those GPUs, which
cannot run here) handed in.  The rest is real: the process backend, the planner as
`tei-manager apply` calls it, and a metrics page rendered by the gateway's own GatewayMetrics
and served over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from textual.pilot import Pilot
from tui_helpers import FROZEN_NOW, metrics_server, settle

from tei_manager import orchestrator
from tei_manager.metrics import GatewayMetrics
from tei_manager.orchestrator import InstanceStatus
from tei_manager.tui.app import TeiManagerApp
from tei_manager.tui.screens.overview import OverviewScreen
from tei_manager.tui.screens.plan import PlanScreen
from tei_manager.tui.services import TuiServices

SnapCompare = Callable[..., bool]

# Shown as the gateway URL in the "gateway not running" line; port 9 (discard) has no listener.
NO_GATEWAY = "http://127.0.0.1:9"

L20_PROFILE = """\
name: l20
description: Two teams on one L20 and one T4.
models:
  bge-m3: {id: BAAI/bge-m3, task: embed}
  reranker: {id: BAAI/bge-reranker-v2-m3, task: rerank}
tenants:
  search: {quota: {requests_per_second: 50}}
  finance: {quota: {requests_per_second: 10}}
deployments:
  - {tenant: search, model: bge-m3, placement: {gpu: 0}, port: 18080}
  - {tenant: search, model: reranker, placement: {gpu: 0}, port: 18081}
  - {tenant: finance, model: bge-m3, placement: {gpu: 1}, port: 18082}
"""

OVERCOMMIT_PROFILE = """\
name: too-big
description: Two large batch budgets pinned to one T4.
models:
  bge-m3: {id: BAAI/bge-m3, task: embed}
  reranker: {id: BAAI/bge-reranker-v2-m3, task: rerank}
tenants:
  search: {}
deployments:
  - {tenant: search, model: bge-m3, placement: {gpu: 1}, runtime: tei, port: 18280,
     tuning: {max_batch_tokens: 65536}}
  - {tenant: search, model: reranker, placement: {gpu: 1}, runtime: tei, port: 18281,
     tuning: {max_batch_tokens: 65536}}
"""


def _ago(seconds: float) -> datetime:
    return datetime.fromtimestamp(FROZEN_NOW - seconds, timezone.utc)


def gpu_instances() -> list[InstanceStatus]:
    """What `status` reports for instances on the injected GPUs (none can run on this host)."""
    def row(name: str, tenant: str, model: str, device: str, port: int, health: str,
            up_s: float | None, restarts: int, vram: int | None, runtime: str = "tei",
            state: str = "running") -> InstanceStatus:
        return InstanceStatus(
            name=name, profile="l20", backend="docker", tenant=tenant, model=model, runtime=runtime,
            device=device, bind="127.0.0.1", port=port, state=state, health=health,
            started_at=_ago(up_s) if up_s is not None else None, restarts=restarts,
            gpu_memory_mib=vram, spec_hash="0" * 16,
        )

    return [
        row("search-bge-m3", "search", "BAAI/bge-m3", "gpu:0", 18080, "healthy", 3 * 3600 + 7 * 60, 0, 9231),
        row("search-reranker", "search", "BAAI/bge-reranker-v2-m3", "gpu:0", 18081, "healthy", 2 * 86400, 1, 5120),
        row("finance-bge-m3", "finance", "BAAI/bge-m3", "gpu:1", 18082, "starting", 45, 0, 1480),
        row("hr-minilm", "hr", "sentence-transformers/all-MiniLM-L6-v2", "cpu", 18083, "-", None, 3, None,
            runtime="fallback", state="exited"),
    ]


def test_overview_without_gpu(snap_compare: SnapCompare, state_dir: Path, profiles_dir: Path,
                              cpu_only: None) -> None:
    """No GPU, nothing running, no gateway: each part says so plainly instead of showing zeros."""
    services = TuiServices(profiles_dir=profiles_dir, backend="process", gateway_url=NO_GATEWAY,
                           clock=lambda: FROZEN_NOW)
    app = TeiManagerApp(services, refresh_interval_s=None)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_overview_with_gpus(snap_compare: SnapCompare, state_dir: Path, profiles_dir: Path, two_gpus: None,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU bars, instances on them, and per-tenant rates from two scrapes two seconds apart."""
    monkeypatch.setattr(orchestrator, "status", lambda *args, **kwargs: gpu_instances())
    (profiles_dir / "l20.yaml").write_text(L20_PROFILE)
    metrics = GatewayMetrics(CollectorRegistry(), gpu_collector=False)
    now = [FROZEN_NOW - 2.0]

    def traffic(search: int, finance: int, rejected: int) -> None:
        for _ in range(search):
            metrics.request_done(tenant="search", model="bge-m3", route="/embed", instance="search-bge-m3",
                                 status=200, seconds=0.018)
        metrics.request_done(tenant="search", model="reranker", route="/rerank", instance="search-reranker",
                             status=200, seconds=0.140)
        for _ in range(finance):
            metrics.request_done(tenant="finance", model="bge-m3", route="/embed", instance="finance-bge-m3",
                                 status=200, seconds=0.045)
        for _ in range(rejected):
            metrics.rejected(tenant="finance", model="bge-m3", reason="quota")

    traffic(search=10, finance=5, rejected=0)

    with metrics_server(metrics.render) as gateway_url:
        services = TuiServices(profiles_dir=profiles_dir, backend="process", gateway_url=gateway_url,
                               clock=lambda: now[0])
        app = TeiManagerApp(services, refresh_interval_s=None)

        async def second_scrape(pilot: Pilot[None]) -> None:
            await settle(pilot)  # the first scrape, at FROZEN_NOW - 2 s
            traffic(search=40, finance=9, rejected=3)
            now[0] = FROZEN_NOW
            screen = pilot.app.screen
            assert isinstance(screen, OverviewScreen)
            screen.action_refresh()
            await settle(pilot)

        assert snap_compare(app, terminal_size=(80, 24), run_before=second_scrape)


def _snapshot_plan_screen(snap_compare: SnapCompare, profiles_dir: Path, filename: str, text: str) -> bool:
    """Open the plan screen of one profile file at 80x24 and compare it with its snapshot."""
    path = profiles_dir / filename
    path.write_text(text)
    services = TuiServices(profiles_dir=profiles_dir, backend="process", gateway_url=NO_GATEWAY,
                           clock=lambda: FROZEN_NOW)
    app = TeiManagerApp(services, refresh_interval_s=None)

    async def open_plan(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.app.push_screen(PlanScreen(path))
        await settle(pilot)

    return snap_compare(app, terminal_size=(80, 24), run_before=open_plan)


def test_plan_with_overcommit_error(snap_compare: SnapCompare, state_dir: Path, profiles_dir: Path,
                                    two_gpus: None) -> None:
    """The planner's over-commit error, with what to change, instead of a plan."""
    assert _snapshot_plan_screen(snap_compare, profiles_dir, "too-big.yaml", OVERCOMMIT_PROFILE)


def test_plan_with_vram_budget(snap_compare: SnapCompare, state_dir: Path, profiles_dir: Path,
                               two_gpus: None) -> None:
    """A plan that fits: what it puts on each GPU against the budget, and what apply would create."""
    assert _snapshot_plan_screen(snap_compare, profiles_dir, "l20.yaml", L20_PROFILE)
