"""The dashboard's apply pulls missing models first, and guards embeddings like `tei-manager apply`.

Real parts: the process backend starts the real fallback worker, models are downloaded by the real
pull service over HTTP. No model hub is reachable here: a stand-in on loopback
(tests/fixtures/hub_standin.py) serves a tiny random-weight model at revision v1 and, as v2, the
same model with perturbed weights (what a new upstream revision looks like to stored vectors).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from textual.pilot import Pilot
from textual.widgets import DataTable, RichLog, Static
from tui_helpers import closed_port_url, free_port, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.hub_standin import hub_standin
from fixtures.tiny_models import build_tiny_embedder, perturbed_copy

from tei_manager import orchestrator
from tei_manager.backends.process import ProcessBackend
from tei_manager.models import fingerprint
from tei_manager.tui.app import TeiManagerApp
from tei_manager.tui.screens.instance import InstanceScreen
from tei_manager.tui.screens.overview import OverviewScreen
from tei_manager.tui.screens.plan import PlanScreen
from tei_manager.tui.screens.progress import ProgressScreen
from tei_manager.tui.services import TuiServices

pytestmark = pytest.mark.slow

PROFILE = "tui-models"
APPLIED_WITHIN_S = 180


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets HF_HUB_OFFLINE=1 so nothing reaches a real hub; downloads here go to loopback."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@pytest.fixture
def hub_root(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    build_tiny_embedder(root / "acme" / "tiny-embedder")
    perturbed_copy(root / "acme" / "tiny-embedder", tmp_path / "v2")
    return root


@pytest.fixture
def cleanup(state_dir: Path) -> Iterator[None]:
    yield
    orchestrator.down(PROFILE, ProcessBackend(), stop_timeout_s=3)


def write_profile(directory: Path, cache: Path, endpoint: str, revision: str, port: int) -> Path:
    path = directory / f"{PROFILE}.yaml"
    path.write_text(yaml.safe_dump({
        "name": PROFILE, "hf_cache": str(cache), "hub": {"endpoint": endpoint},
        "models": {"tiny": {"id": "acme/tiny-embedder", "task": "embed", "revision": revision}},
        "tenants": {"t": {}},
        "deployments": [{"name": "tiny", "tenant": "t", "model": "tiny", "placement": "cpu", "runtime": "fallback",
                         "port": port, "tuning": {"max_batch_tokens": 1024}, "env": {"HF_HUB_OFFLINE": "1"}}],
        "gateway": {"port": free_port()},
    }))
    return path


async def apply_from_the_plan(pilot: Pilot[None], app: TeiManagerApp, path: Path) -> ProgressScreen:
    """Open the plan of `path`, confirm the apply, and wait until it has finished (or failed)."""
    await app.push_screen(PlanScreen(path))
    await wait_until(pilot, lambda: getattr(app.screen, "preview", None) is not None, timeout_s=30, what="the plan")
    await pilot.press("a", "y")
    await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), timeout_s=5, what="apply to start")
    progress = app.screen
    assert isinstance(progress, ProgressScreen)
    await wait_until(pilot, lambda: progress.finished, timeout_s=APPLIED_WITHIN_S, what="apply to finish")
    return progress


def log_text(screen: ProgressScreen) -> list[str]:
    return [strip.text for strip in screen.query_one(RichLog).lines]


async def test_apply_pulls_with_progress_then_a_drift_is_refused_and_can_be_accepted(
        tmp_path: Path, profiles_dir: Path, hub_root: Path, online: None, cleanup: None) -> None:
    port = free_port()
    with hub_standin(hub_root) as hub:
        hub.revisions["acme/tiny-embedder@v2"] = tmp_path / "v2"
        path = write_profile(profiles_dir, tmp_path / "cache", hub.endpoint, "v1", port)
        services = TuiServices(profiles_dir=profiles_dir, backend="process", gateway_url=closed_port_url())
        app = TeiManagerApp(services, refresh_interval_s=None)
        async with app.run_test(size=(120, 40)) as pilot:
            # First apply: the model is not in the cache; each file gets a row that ends "done".
            progress = await apply_from_the_plan(pilot, app, path)
            assert progress.ok, str(progress.query_one("#apply-result", Static).render())
            pulls = progress.query_one("#pull-table", DataTable)
            assert pulls.display
            files = {str(pulls.get_cell(key, "file")): str(pulls.get_cell(key, "progress")) for key in pulls.rows}
            assert "model.safetensors" in files and "tokenizer.json" in files
            assert all(shown.startswith("done") for shown in files.values()), files
            events = log_text(progress)
            pulled = next(i for i, line in enumerate(events) if "pulled acme/tiny-embedder@v1" in line)
            created = next(i for i, line in enumerate(events) if line.startswith("tiny: creating"))
            assert pulled < created  # downloads before the instance starts: the health gate times start-up
            recorded = fingerprint.load(PROFILE, "tiny")
            assert recorded is not None and recorded.computes["revision"] == "v1"

            # The overview shows the deployment's fingerprint age, with no drift yet.
            await pilot.press("escape")
            await wait_until(pilot, lambda: isinstance(app.screen, OverviewScreen), timeout_s=5, what="the overview")
            table = app.screen.query_one("#instances-table", DataTable)
            await wait_until(pilot, lambda: table.row_count == 1, timeout_s=30, what="the instance row")
            assert re.fullmatch(r"\d+s|\d+m\d\ds", str(table.get_cell(f"{PROFILE}/tiny", "Fingerprint")))

            # v2 moves the vectors: refused with the figures per probe; the v1 instance serves on.
            path.write_text(path.read_text().replace("revision: v1", "revision: v2")
                            .replace(f"port: {port}", f"port: {free_port()}"))
            progress = await apply_from_the_plan(pilot, app, path)
            assert progress.ok is False and progress.drift_refused
            result = str(progress.query_one("#apply-result", Static).render())
            assert "tiny would compute different embeddings (revision 'v1' -> 'v2'); beyond cosine 0.99" in result
            assert "probe 1 '季度报告显示收入增长了百分之十二。': cosine" in result
            assert "c: accept the change and apply again" in result and "rolled back" in result
            assert fingerprint.load(PROFILE, "tiny") == recorded
            offered = [key for key, active in app.active_bindings.items()
                       if active.binding.action == "accept_change" and active.enabled]
            assert offered == ["c"]  # in the footer now

            # c, confirmed: the same apply again, the change accepted.
            await pilot.press("c")
            await pilot.press("y")
            await wait_until(pilot, lambda: progress.finished, timeout_s=APPLIED_WITHIN_S, what="the accepted apply")
            assert progress.ok, str(progress.query_one("#apply-result", Static).render())
            accepted = fingerprint.load(PROFILE, "tiny")
            assert accepted is not None and accepted.computes["revision"] == "v2"
            assert accepted.last_drift is not None and accepted.last_drift.beyond

            # The overview and the instance screen show the accepted drift.
            await pilot.press("escape")
            await wait_until(pilot, lambda: isinstance(app.screen, OverviewScreen), timeout_s=5, what="the overview")
            table = app.screen.query_one("#instances-table", DataTable)
            await wait_until(pilot, lambda: " · cos " in str(table.get_cell(f"{PROFILE}/tiny", "Fingerprint")),
                             timeout_s=30, what="the drift in the Fingerprint column")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, InstanceScreen), timeout_s=5, what="the instance")
            facts = app.screen.query_one("#instance-facts", Static)
            await wait_until(pilot, lambda: "last drift: drift after revision 'v1' -> 'v2'" in str(facts.render()),
                             timeout_s=10, what="the drift on the instance screen")
