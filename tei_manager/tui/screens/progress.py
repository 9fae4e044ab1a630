"""Apply, step 3: the orchestrator works; one row per instance shows where it is and why it failed."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, RichLog, Static

from tei_manager.core.diff import Action
from tei_manager.core.plan import Plan
from tei_manager.errors import TeiManagerError
from tei_manager.orchestrator import Event
from tei_manager.tui.messages import ApplyCompleted, ApplyProgressed
from tei_manager.tui.screens.base import TuiScreen
from tei_manager.tui.services import ProgressLine, describe_event
from tei_manager.tui.widgets.cells import plain, styled

_STAGE_STYLE = {"healthy": "$success", "done": "$success", "kept": "dim", "removed": "dim"}


class ProgressScreen(TuiScreen):
    HELP = (
        "Apply is running: each row is one instance. A failure shows its cause here and in the\n"
        "log below; what ran before is restored by the orchestrator. Esc returns once it is done."
    )
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave", "Overview")]

    def __init__(self, plan: Plan, actions: tuple[Action, ...]) -> None:
        super().__init__()
        self.plan = plan
        self.actions = actions
        self.finished = False
        self.ok: bool | None = None
        # What the event log last said per instance: waiting events arrive every second and
        # only a new stage or a new log line from the instance is worth a line.
        self._logged: dict[str | None, tuple[str, str]] = {}

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(classes="box") as box:
            box.border_title = f"Applying {self.plan.profile}"
            yield DataTable(id="progress-table", cursor_type="row")
        yield Static(f"applying {self.plan.profile}…", id="apply-result", markup=False)
        with Vertical(classes="box", id="progress-log-box") as box:
            box.border_title = "Events"
            yield RichLog(id="progress-log", wrap=True, markup=False, highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#progress-table", DataTable)
        table.add_column("Instance", key="instance")
        table.add_column("Action", key="action")
        table.add_column("Stage", key="stage")
        table.add_column("Detail", key="detail")
        for action in self.actions:
            stage = "kept" if action.kind == "keep" else "pending"
            table.add_row(plain(action.name), plain(action.kind),
                          styled(self, stage, _STAGE_STYLE.get(stage, "dim")), plain(action.reason), key=action.name)
        self._apply(self.plan)

    @work(thread=True, exclusive=True, group="apply", exit_on_error=False)
    def _apply(self, plan: Plan) -> None:
        def on_event(event: Event) -> None:
            line = describe_event(event)
            if line is not None:
                self.post_message(ApplyProgressed(line))

        try:
            result = self.tui.services.apply(plan, on_event)
        except TeiManagerError as exc:
            self.post_message(ApplyCompleted(ok=False, summary=exc.what, error=exc))
            return
        changed = sum(1 for a in result.actions if a.changes_something)
        self.post_message(ApplyCompleted(ok=True, summary=f"{changed} change(s) in {result.duration_s:.0f} s"))

    def on_apply_progressed(self, event: ApplyProgressed) -> None:
        line = event.line
        self._log(line)
        table = self.query_one("#progress-table", DataTable)
        if line.instance is None or line.instance not in table.rows:
            return
        style = "$error" if line.failed else _STAGE_STYLE.get(line.stage, "$warning")
        table.update_cell(line.instance, "stage", styled(self, line.stage, style), update_width=True)
        detail = line.detail.splitlines()[0] if line.detail else ""
        table.update_cell(line.instance, "detail", plain(detail), update_width=True)

    def _log(self, line: ProgressLine) -> None:
        key = (line.stage, line.note)
        if line.stage == "waiting" and self._logged.get(line.instance) == key:
            return
        self._logged[line.instance] = key
        prefix = f"{line.instance}: " if line.instance else ""
        text = line.note if line.stage == "waiting" and line.note else line.detail
        self.query_one(RichLog).write(f"{prefix}{line.stage}" + (f" — {text}" if text else ""))

    def on_apply_completed(self, message: ApplyCompleted) -> None:
        self.finished, self.ok = True, message.ok
        result = self.query_one("#apply-result", Static)
        result.set_class(message.ok, "ok")
        result.set_class(not message.ok, "failed")
        if message.ok:
            result.update(f"✓ {self.plan.profile} applied: {message.summary} — Esc for the overview")
        else:
            error = message.error
            text = error.render() if error else message.summary
            result.update(f"✗ apply failed: {text}")
            self.query_one(RichLog).write(f"apply failed: {text}")
            table = self.query_one("#progress-table", DataTable)
            if error is not None and error.where is not None and error.where in table.rows:
                # The instance the error names gets the cause in its own row.
                table.update_cell(error.where, "stage", styled(self, "failed", "$error"), update_width=True)
                table.update_cell(error.where, "detail", plain(error.what.splitlines()[0]), update_width=True)

    async def action_leave(self) -> None:
        if not self.finished:
            self.notify("apply is still running; it finishes (or rolls back) on its own", severity="warning")
            return
        # Back past the profile list to the overview, where the new instances show up.
        while len(self.app.screen_stack) > 1:
            await self.app.pop_screen()
