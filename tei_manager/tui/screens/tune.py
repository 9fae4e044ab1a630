"""Tune a deployment from the dashboard: pick it, give the SLO and the budget, watch the trials, read
the result (the same table, summary and text chart `tei-manager tune` prints), write it back.

The tune runs in a thread worker (`TuiServices.tune`, the CLI's own service); each trial that starts
or ends is posted back as a typed message. Esc while it runs asks it to stop after the current
trial; the trial instances are removed either way.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Select, Static

from tei_manager.errors import TeiManagerError
from tei_manager.tui.screens.base import TuiScreen
from tei_manager.tui.widgets.cells import plain, styled
from tei_manager.tune import report
from tei_manager.tune.runner import TuneResult, parse_budget
from tei_manager.tune.search import Value
from tei_manager.tune.session import TuneError, TuneOptions
from tei_manager.tune.trial import TrialResult


@dataclass
class TuneTrialStarted(Message):
    deployment: str
    phase: str
    settings: str


@dataclass
class TuneTrialFinished(Message):
    deployment: str
    phase: str
    settings: str
    throughput: float
    p99_ms: float | None
    peak_mib: int | None
    outcome: str  # "ok", "misses the SLO", "infeasible: <why>"


@dataclass
class TuneFinished(Message):
    result: TuneResult | None
    error: TeiManagerError | None = None
    cancelled: bool = False


class TuneCancelled(Exception):
    """Raised in the tune's thread at the next trial once Esc asked it to stop."""


def _label(settings: Mapping[str, Value]) -> str:
    return " ".join(f"{report.short_key(k)}={v}" for k, v in settings.items() if k != "max_concurrent_requests")


class _Bridge:
    """The runner's `Progress`, in the worker thread: posts messages, and stops when asked."""

    def __init__(self, screen: TuneScreen, cancel: threading.Event) -> None:
        self.screen = screen
        self.cancel = cancel

    def trial_started(self, deployment: str, phase: str, settings: Mapping[str, Value]) -> None:
        if self.cancel.is_set():
            raise TuneCancelled
        self.screen.post_message(TuneTrialStarted(deployment, phase, _label(settings)))

    def trial_finished(self, deployment: str, phase: str, result: TrialResult) -> None:
        best = result.best
        outcome = (f"infeasible: {result.infeasible}" if result.infeasible
                   else "ok" if result.meets_slo else "misses the SLO")
        peak = None if result.peak_memory_bytes is None else result.peak_memory_bytes // 2**20
        self.screen.post_message(TuneTrialFinished(deployment, phase, _label(result.settings), result.throughput,
                                                   best.p99_ms if best else None, peak, outcome))


class TuneScreen(TuiScreen):
    HELP = (
        "Tune measures temporary copies of a deployment (live instances are never touched): it\n"
        "raises the load on each setting until the p99 SLO breaks and keeps the one that serves\n"
        "the most. s starts, Esc stops after the current trial, w writes the result into the profile."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start"),
        Binding("w", "write", "Write to profile"),
        Binding("escape", "leave", "Back"),
    ]

    def __init__(self, source: Path, deployments: list[str], *, defaults: TuneOptions | None = None) -> None:
        super().__init__()
        self.source = source
        self.deployments = deployments
        self.defaults = defaults or TuneOptions(slo_p99_ms=100, budget_seconds=600)
        self.running = False
        self.result: TuneResult | None = None
        self.error: TeiManagerError | None = None
        self._cancel = threading.Event()
        self._trials = 0

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll(id="tune-body"):
            yield Static(f"tune {self.source.name}", id="tune-title", markup=False)
            with Horizontal(id="tune-form"):
                yield Label("deployment")
                yield Select([(d, d) for d in self.deployments], value=self.deployments[0], allow_blank=False,
                             id="tune-deployment")
                yield Label("p99 SLO ms")
                yield Input(f"{self.defaults.slo_p99_ms:g}", id="tune-slo")
                yield Label("budget")
                yield Input(f"{self.defaults.budget_seconds:g}s", id="tune-budget")
                yield Button("Start", id="tune-start", variant="primary")
            yield Static("", id="tune-status", markup=False)
            with Vertical(classes="box", id="tune-trials-box") as box:
                box.border_title = "Trials"
                yield DataTable(id="tune-trials", cursor_type="row")
            yield Static("", id="tune-result", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#tune-trials", DataTable)
        for column in ("deployment", "phase", "settings", "inputs/s", "p99 ms", "peak MiB", "result"):
            table.add_column(column, key=column)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "tune-start":
            self.action_start()

    def _options(self) -> TuneOptions:
        deployment = self.query_one("#tune-deployment", Select).value
        slo_text = self.query_one("#tune-slo", Input).value.strip()
        try:
            slo = float(slo_text)
        except ValueError:
            raise TuneError(f"the SLO {slo_text!r} is not a number of milliseconds", where="p99 SLO ms") from None
        if slo <= 0:
            raise TuneError("the SLO must be more than zero", where="p99 SLO ms")
        try:
            budget = parse_budget(self.query_one("#tune-budget", Input).value)
        except ValueError as exc:
            raise TuneError(str(exc), where="budget") from None
        return replace(self.defaults, slo_p99_ms=slo, budget_seconds=budget, deployments=(str(deployment),))

    def action_start(self) -> None:
        if self.running:
            self.notify("a tune is already running")
            return
        try:
            options = self._options()
        except TuneError as exc:
            self.notify(exc.render(), severity="error")
            return
        self.running, self.result, self.error = True, None, None
        self._cancel.clear()
        self._trials = 0
        self.query_one("#tune-trials", DataTable).clear()
        self.query_one("#tune-result", Static).update("")
        self._status(f"tuning {options.deployments[0]}: p99 <= {options.slo_p99_ms:g} ms within "
                     f"{options.budget_seconds:g} s; starting trial instances…")
        self._tune(options)

    @work(thread=True, exclusive=True, group="tune", exit_on_error=False)
    def _tune(self, options: TuneOptions) -> None:
        try:
            result = self.tui.services.tune(self.source, options, _Bridge(self, self._cancel))
        except TuneCancelled:
            self.post_message(TuneFinished(None, cancelled=True))
            return
        except TeiManagerError as exc:
            self.post_message(TuneFinished(None, error=exc))
            return
        self.post_message(TuneFinished(result))

    def _status(self, text: str) -> None:
        self.query_one("#tune-status", Static).update(text)

    def on_tune_trial_started(self, message: TuneTrialStarted) -> None:
        self._status(f"trial {self._trials + 1} ({message.phase}): {message.deployment} {message.settings}…")

    def on_tune_trial_finished(self, message: TuneTrialFinished) -> None:
        self._trials += 1
        style = "$success" if message.outcome == "ok" else "$error" if message.outcome.startswith("infeasible") \
            else "$warning"
        self.query_one("#tune-trials", DataTable).add_row(
            plain(message.deployment), plain(message.phase), plain(message.settings),
            plain(f"{message.throughput:,.1f}"), plain("-" if message.p99_ms is None else f"{message.p99_ms:,.0f}"),
            plain("-" if message.peak_mib is None else f"{message.peak_mib:,}"),
            styled(self, message.outcome, style))

    def on_tune_finished(self, message: TuneFinished) -> None:
        self.running = False
        if message.cancelled:
            self._status(f"stopped after {self._trials} trial(s); the trial instances were removed")
            return
        if message.error is not None:
            self.error = message.error
            self._status(f"tune failed: {message.error.render()}")
            return
        result = self.result = message.result
        assert result is not None
        lines: list[str] = []
        for dep in result.deployments:
            lines += report.summary_lines(dep)
            lines.append(report.text_chart(dep, result.slo_p99_ms))
        self.query_one("#tune-result", Static).update("\n".join(lines))
        self._status(f"done: {self._trials} trial(s) in {result.seconds:.0f} s — w writes the chosen values "
                     f"into {self.source.name}")

    def action_write(self) -> None:
        result = self.result
        if result is None or self.running:
            self.notify("there is no finished tune to write", severity="warning")
            return
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        try:
            written = self.tui.services.write_tuning(self.source, result, date)
        except TeiManagerError as exc:
            self.notify(exc.render(), severity="error")
            return
        if written:
            self.notify(f"wrote {', '.join(written)} into {self.source.name}; apply to use it")
        else:
            self.notify("no setting met the SLO: nothing written", severity="warning")

    def on_unmount(self) -> None:
        self._cancel.set()  # leaving the dashboard mid-tune: stop at the next trial, remove what runs

    def action_leave(self) -> None:
        if self.running:
            self._cancel.set()
            self.notify("stopping after the current trial; its instance is removed")
            return
        self.app.pop_screen()
