"""One instance: its facts, a live log tail, and restart / stop / `/info`."""

from __future__ import annotations

import json
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Footer, Header, Log, Static

from tei_manager.errors import TeiManagerError
from tei_manager.models.fingerprint import Fingerprint
from tei_manager.orchestrator import InstanceStatus
from tei_manager.tui import formatting as fmt
from tei_manager.tui.messages import ActionDone, InstanceInfo, InstancesObserved, LogLines
from tei_manager.tui.screens.base import TuiScreen

LOG_TAIL = 200
LOG_POLL_S = 1.0


def describe(row: InstanceStatus, recorded: Fingerprint | None = None, now: float | None = None) -> str:
    health = row.state if row.health == "-" else row.health
    if recorded is None:
        seen = "no embedding fingerprint recorded yet"
    else:
        drift = recorded.last_drift.describe() if recorded.last_drift else "none"
        seen = (f"fingerprint of {row.deployment}: recorded {fmt.duration(recorded.age_s(now))} ago; "
                f"last drift: {drift}")
    return (
        f"profile {row.profile} · tenant {row.tenant} · {row.backend} backend\n"
        f"{row.model} · {row.runtime} on {row.device} · {row.address} · {health}\n"
        f"{seen}"
    )


class InstanceScreen(TuiScreen):
    HELP = (
        "The log follows the instance. Restart and stop ask first; a stopped instance comes\n"
        "back with the next apply. i shows the instance's own /info."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "restart", "Restart"),
        Binding("s", "stop", "Stop"),
        Binding("i", "info", "/info"),
        Binding("escape", "app.back", "Back"),
    ]

    def __init__(self, row: InstanceStatus) -> None:
        super().__init__()
        self.row = row
        self._lines: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(classes="box", id="instance-box") as box:
            box.border_title = self.row.name
            yield Static(describe(self.row), id="instance-facts", markup=False)
        with Vertical(classes="box", id="log-box") as box:
            box.border_title = "Log"
            yield Log(id="log-tail", highlight=False, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Log).focus()
        self._observe()  # at once: the fingerprint line comes with the fresh row
        self._tail()
        self.set_interval(LOG_POLL_S, self._tail)
        if self.tui.refresh_interval_s:
            self.set_interval(self.tui.refresh_interval_s, self._observe)

    @work(thread=True, exclusive=True, group="instance-status", exit_on_error=False)
    def _observe(self) -> None:
        services = self.tui.services
        try:
            rows = services.instances()
            self.post_message(InstancesObserved(rows, fingerprints=services.fingerprints([self.row.profile])))
        except TeiManagerError as exc:
            self.post_message(InstancesObserved([], error=exc))

    def on_instances_observed(self, message: InstancesObserved) -> None:
        mine = [r for r in message.instances if r.name == self.row.name and r.profile == self.row.profile]
        facts = self.query_one("#instance-facts", Static)
        recorded = message.fingerprints.get((self.row.profile, self.row.deployment))
        now = self.tui.services.clock()
        if mine:
            self.row = mine[0]
            facts.update(describe(self.row, recorded, now))
        elif message.error is None:
            facts.update(describe(self.row, recorded, now) + "\n(no longer listed by the engine)")

    # The backends' `logs(tail=N)` is cheap for both engines; polling it keeps one code path
    # for docker and processes and never leaves a follow stream open when the screen closes.
    def _tail(self) -> None:
        self._read_log(self.row)

    @work(thread=True, exclusive=True, group="log", exit_on_error=False)
    def _read_log(self, row: InstanceStatus) -> None:
        try:
            self.post_message(LogLines(self.tui.services.logs(row, tail=LOG_TAIL)))
        except TeiManagerError as exc:
            self.post_message(LogLines([f"(log unavailable: {exc.what})"]))

    def on_log_lines(self, message: LogLines) -> None:
        if message.lines == self._lines:
            return
        log = self.query_one(Log)
        new = _new_lines(self._lines, message.lines)
        if new is None:
            log.clear()
            log.write_lines(message.lines)
        else:
            log.write_lines(new)
        self._lines = message.lines

    # -- actions --------------------------------------------------------------------------------
    def _confirm(self, verb: str, question: str, then: str) -> None:
        from tei_manager.tui.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(then, self.row)

        self.app.push_screen(ConfirmScreen(f"{verb} {self.row.name}", question, verb), answered)

    def action_restart(self) -> None:
        self._confirm("Restart", f"Restart {self.row.name}? It stops serving until it is healthy again.",
                      "restart")

    def action_stop(self) -> None:
        self._confirm("Stop", f"Stop {self.row.name}? It stays stopped until the next apply.", "stop")

    @work(thread=True, exclusive=True, group="act", exit_on_error=False)
    def _act(self, action: str, row: InstanceStatus) -> None:
        services = self.tui.services
        try:
            (services.restart if action == "restart" else services.stop)(row)
        except TeiManagerError as exc:
            self.post_message(ActionDone(action, row.name, error=exc))
            return
        self.post_message(ActionDone(action, row.name))

    def on_action_done(self, message: ActionDone) -> None:
        if message.error is not None:
            self.tui.show_error(f"{message.action} {message.target} failed", message.error)
            return
        self.notify(f"{message.action} {message.target}: done")
        self.query_one(Log).write_line(f"--- {message.action} requested from the dashboard ---")
        self._observe()

    def action_info(self) -> None:
        self._fetch_info(self.row)

    @work(thread=True, exclusive=True, group="info", exit_on_error=False)
    def _fetch_info(self, row: InstanceStatus) -> None:
        try:
            self.post_message(InstanceInfo(row.name, self.tui.services.info(row)))
        except TeiManagerError as exc:
            self.post_message(InstanceInfo(row.name, None, error=exc.render()))

    def on_instance_info(self, message: InstanceInfo) -> None:
        if message.info is None:
            self.tui.show_error(f"/info of {message.name}", message.error)
            return
        from tei_manager.tui.screens.text import TextScreen

        self.app.push_screen(TextScreen(f"/info of {message.name}", json.dumps(message.info, indent=2)))


def _new_lines(old: list[str], new: list[str]) -> list[str] | None:
    """Lines of `new` after the overlap with the end of `old`; None when they do not overlap.

    The backend returns the last N lines each time; appending only the new ones keeps the
    user's scroll position instead of redrawing the whole log every second.
    """
    if not old:
        return list(new)
    for start in range(len(new), 0, -1):
        if new[:start] == old[-start:]:
            return new[start:]
    return None
