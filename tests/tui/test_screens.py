"""Keyboard behaviour that needs no running instance: help, quitting, the profile list."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.coordinate import Coordinate
from textual.widgets import DataTable, OptionList
from tui_helpers import FROZEN_NOW, closed_port_url, settle, wait_until

pytestmark = pytest.mark.usefixtures("cpu_only")

from tei_manager.tui.app import TeiManagerApp
from tei_manager.tui.screens.help import HelpScreen
from tei_manager.tui.screens.overview import OverviewScreen
from tei_manager.tui.screens.profiles import ProfilesScreen
from tei_manager.tui.services import TuiServices


def make_app(profiles_dir: Path) -> TeiManagerApp:
    services = TuiServices(profiles_dir=profiles_dir, backend="process", gateway_url=closed_port_url(),
                           clock=lambda: FROZEN_NOW)
    return TeiManagerApp(services, refresh_interval_s=None)


async def test_question_mark_lists_the_keys_of_the_current_screen(state_dir: Path, profiles_dir: Path) -> None:
    app = make_app(profiles_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = app.screen.query_one("#help-keys", DataTable)
        described = {str(keys.get_cell_at(Coordinate(row, 1))) for row in range(keys.row_count)}
        assert {"Apply", "Refresh", "Down all", "Quit", "Help"} <= described
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_q_quits_from_any_screen(state_dir: Path, profiles_dir: Path) -> None:
    app = make_app(profiles_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ProfilesScreen), timeout_s=5, what="profiles")
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_a_broken_profile_is_listed_with_its_error_and_cannot_be_picked(
    state_dir: Path, profiles_dir: Path
) -> None:
    (profiles_dir / "broken.yaml").write_text("name: broken\nmodels: {}\ndeployments: []\nunknown_key: 1\n")
    app = make_app(profiles_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ProfilesScreen), timeout_s=5, what="profiles")
        options = app.screen.query_one(OptionList)
        await wait_until(pilot, lambda: options.option_count == 1, timeout_s=10, what="the profile list")
        option = options.get_option_at_index(0)
        assert option.disabled
        assert "unknown_key" in str(option.prompt)
        await pilot.press("enter")
        assert isinstance(app.screen, ProfilesScreen)  # nothing to plan
