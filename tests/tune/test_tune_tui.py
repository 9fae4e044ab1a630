"""The dashboard tunes a deployment: from the plan screen, against real worker processes.

The process backend starts the real fallback worker on a tiny random-weight model (tests/fixtures)
for each trial; the Pilot drives the screen as a user would (t, the form, Start, w). The space is
narrowed and the steps shortened (what `--space` and `--step-seconds` do on the CLI) so the tune
stays well under a minute; nothing about speed is asserted.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from tei_manager.backends.process import ProcessBackend
from tei_manager.profiles import load_profile
from tei_manager.tui.app import TeiManagerApp
from tei_manager.tui.screens.plan import PlanScreen
from tei_manager.tui.screens.tune import TuneScreen
from tei_manager.tui.services import TuiServices
from tei_manager.tune.trial import Schedule

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait(pilot: Pilot[Any], condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await pilot.pause(0.2)
    await pilot.pause()


def _profile(directory: Path, model: Path) -> Path:
    path = directory / "tiny.yaml"
    path.write_text(f"""\
name: tiny
models:
  tiny:
    id: example/tiny-embedder  # random weights, built by tests/fixtures/tiny_models.py
    task: embed
    path: {model}
    params_millions: 1
    hidden_size: 32
    num_layers: 2
    max_input_length: 64
tenants:
  demo: {{}}
deployments:
  - name: tiny-embed
    tenant: demo
    model: tiny
    placement: cpu
    runtime: fallback
    port: {_free_port()}
    # the budget for one batch
    tuning: {{max_batch_tokens: 2048, max_concurrent_requests: 16, max_client_batch_size: 4}}
gateway: {{port: {_free_port()}}}
""")
    return path


async def test_tune_a_deployment_from_the_dashboard(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    path = _profile(tmp_path, tiny_embedder_dir)
    services = TuiServices(profiles_dir=tmp_path, backend="process", gateway_url=f"http://127.0.0.1:{_free_port()}")
    app = TeiManagerApp(services, refresh_interval_s=None)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.push_screen(PlanScreen(path))
        await _wait(pilot, lambda: getattr(app.screen, "preview", None) is not None, timeout_s=15, what="the plan")
        await pilot.press("t")
        await _wait(pilot, lambda: isinstance(app.screen, TuneScreen), timeout_s=5, what="the tune screen")
        screen = app.screen
        assert isinstance(screen, TuneScreen) and screen.deployments == ["tiny-embed"]
        screen.defaults = replace(
            screen.defaults,
            narrow={"max_batch_tokens": [512, 2048], "max_client_batch_size": [4], "forward_workers": [1],
                    "dtype": ["float32"]},
            schedule=Schedule(step_seconds=0.5, warmup_seconds=0.1, max_concurrency=2))
        screen.query_one("#tune-slo", Input).value = "20000"
        screen.query_one("#tune-budget", Input).value = "90s"
        await pilot.click("#tune-start")
        await _wait(pilot, lambda: screen.running, timeout_s=5, what="the tune to start")
        await _wait(pilot, lambda: not screen.running, timeout_s=150, what="the tune to finish")

        assert screen.error is None and screen.result is not None
        table = screen.query_one("#tune-trials", DataTable)
        dep = screen.result.deployments[0]
        # One row per trial as it finished: the current setting, the search, the confirmation round.
        assert table.row_count == 1 + len(dep.search) + dep.confirmation_trials >= 2
        shown = str(screen.query_one("#tune-result", Static).render())
        assert "tiny-embed: chosen" in shown and "* chosen, # current" in shown
        assert "done:" in str(screen.query_one("#tune-status", Static).render())
        assert ProcessBackend().list("tiny-tune") == []  # every trial instance removed
        assert ProcessBackend().list("tiny") == []  # nothing live was started

        await pilot.press("w")
        await pilot.pause()
        assert "# tuned by tei-manager tune" in path.read_text()
        assert "# the budget for one batch" in path.read_text()
        load_profile(path)
        await pilot.press("escape")
        await _wait(pilot, lambda: isinstance(app.screen, PlanScreen), timeout_s=5, what="the plan screen")
