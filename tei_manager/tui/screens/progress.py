"""Apply, step 3: missing models are pulled (a row per file), then the orchestrator works; one row
per instance shows where it is and why it failed.  A refusal because a deployment's embeddings
drifted can be accepted from here (c), which applies again with the change accepted."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, RichLog, Static

from tei_manager.core.diff import Action
from tei_manager.core.plan import Plan
from tei_manager.errors import TeiManagerError
from tei_manager.models.fingerprint import EmbeddingDriftError
from tei_manager.models.store import FileProgress, Pulled
from tei_manager.orchestrator import Event
from tei_manager.tui.messages import ApplyCompleted, ApplyProgressed, ModelsPulled, PullProgressed
from tei_manager.tui.screens.base import TuiScreen
from tei_manager.tui.services import ProgressLine, describe_event, describe_pull
from tei_manager.tui.widgets.cells import plain, styled

_STAGE_STYLE = {"healthy": "$success", "done": "$success", "kept": "dim", "removed": "dim"}


class ProgressScreen(TuiScreen):
    HELP = (
        "Apply is running: missing models are pulled first (one row per file), then each row is\n"
        "one instance. A failure shows its cause here and in the log below; what ran before is\n"
        "restored by the orchestrator. If embeddings would drift, c accepts the change and applies\n"
        "again. Esc returns once it is done."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave", "Overview"),
        Binding("c", "accept_change", "Accept change"),
    ]

    def __init__(self, plan: Plan, actions: tuple[Action, ...], source: Path) -> None:
        super().__init__()
        self.plan = plan
        self.actions = actions
        self.source = source
        self.finished = False
        self.ok: bool | None = None
        self.drift_refused = False  # the last attempt stopped on an embedding drift: `c` may accept it
        # What the event log last said per instance: waiting events arrive every second and
        # only a new stage or a new log line from the instance is worth a line.
        self._logged: dict[str | None, tuple[str, str]] = {}

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(classes="box") as box:
            box.border_title = f"Applying {self.plan.profile}"
            yield DataTable(id="progress-table", cursor_type="row")
        with Vertical(classes="box", id="pull-box") as box:
            box.border_title = "Models"
            yield DataTable(id="pull-table", cursor_type="none")
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
        self._reset_rows()
        pulls = self.query_one("#pull-table", DataTable)
        pulls.add_column("Model", key="model")
        pulls.add_column("File", key="file")
        pulls.add_column("Pulled", key="progress")
        self.query_one("#pull-box").display = False  # shown once a file is being fetched
        self._apply(self.plan, accept_change=False)

    def _reset_rows(self) -> None:
        table = self.query_one("#progress-table", DataTable)
        table.clear()
        for action in self.actions:
            stage = "kept" if action.kind == "keep" else "pending"
            table.add_row(plain(action.name), plain(action.kind),
                          styled(self, stage, _STAGE_STYLE.get(stage, "dim")), plain(action.reason), key=action.name)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "accept_change":
            return self.drift_refused  # in the footer only after a drift refusal
        return True

    @work(thread=True, exclusive=True, group="apply", exit_on_error=False)
    def _apply(self, plan: Plan, *, accept_change: bool) -> None:
        def on_event(event: Event) -> None:
            line = describe_event(event)
            if line is not None:
                self.post_message(ApplyProgressed(line))

        shown: dict[str, str] = {}

        def on_pull(event: FileProgress) -> None:
            # Chunks arrive by the megabyte: post a row update only when what it shows changes.
            line = describe_pull(event)
            if line is not None and shown.get(line.key) != line.progress.split()[0]:
                shown[line.key] = line.progress.split()[0]
                self.post_message(PullProgressed(line))

        def on_pulled(pulled: list[Pulled]) -> None:
            self.post_message(ModelsPulled(pulled))

        try:
            result = self.tui.services.apply(self.source, plan, on_event, on_pull=on_pull, on_pulled=on_pulled,
                                             accept_embedding_change=accept_change)
        except TeiManagerError as exc:
            drift = isinstance(exc, EmbeddingDriftError) or isinstance(exc.__cause__, EmbeddingDriftError)
            self.post_message(ApplyCompleted(ok=False, summary=exc.what, error=exc, drift=drift))
            return
        changed = sum(1 for a in result.actions if a.changes_something)
        self.post_message(ApplyCompleted(ok=True, summary=f"{changed} change(s) in {result.duration_s:.0f} s"))

    def on_pull_progressed(self, message: PullProgressed) -> None:
        line = message.line
        self.query_one("#pull-box").display = True
        table = self.query_one("#pull-table", DataTable)
        style = "$success" if line.finished else "$warning"
        if line.key not in table.rows:
            table.add_row(plain(line.model), plain(line.file), styled(self, line.progress, style), key=line.key)
            self.query_one("#apply-result", Static).update(f"pulling the models of {self.plan.profile}…")
        else:
            table.update_cell(line.key, "progress", styled(self, line.progress, style), update_width=True)

    def on_models_pulled(self, message: ModelsPulled) -> None:
        log = self.query_one(RichLog)
        for item in message.pulled:
            if item.fetched:
                log.write(f"{item.key}: pulled {item.hub_id}@{item.revision} "
                          f"({item.fetched} of {item.files} files downloaded)")
        self.query_one("#apply-result", Static).update(f"applying {self.plan.profile}…")

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
        self.drift_refused = message.drift
        self.refresh_bindings()
        result = self.query_one("#apply-result", Static)
        result.set_class(message.ok, "ok")
        result.set_class(not message.ok, "failed")
        if message.ok:
            result.update(f"✓ {self.plan.profile} applied: {message.summary} — Esc for the overview")
            return
        error = message.error
        if error is not None and message.drift:
            # The CLI's fix names its flag; here the same acceptance is one key away.
            text = f"{error.what}\n  c: accept the change and apply again (vectors stored before are not " \
                   f"comparable: re-index them) · Esc: keep what runs"
        else:
            text = error.render() if error else message.summary
        result.update(f"✗ apply failed: {text}")
        self.query_one(RichLog).write(f"apply failed: {text}")
        table = self.query_one("#progress-table", DataTable)
        if error is not None and error.where is not None and error.where in table.rows:
            # The instance the error names gets the cause in its own row.
            table.update_cell(error.where, "stage", styled(self, "failed", "$error"), update_width=True)
            table.update_cell(error.where, "detail", plain(error.what.splitlines()[0]), update_width=True)

    def action_accept_change(self) -> None:
        from tei_manager.tui.screens.confirm import ConfirmScreen

        if not self.drift_refused:
            return
        question = (f"Apply {self.plan.profile} again and switch even though the embeddings drift?\n"
                    "Vectors stored with the old model are not comparable with new ones: re-index them.")

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            self.finished, self.ok, self.drift_refused = False, None, False
            self.refresh_bindings()
            self._reset_rows()
            self._logged.clear()
            result = self.query_one("#apply-result", Static)
            result.remove_class("failed")
            result.update(f"applying {self.plan.profile}, the embedding change accepted…")
            self.query_one(RichLog).write("applying again with the embedding change accepted")
            self._apply(self.plan, accept_change=True)

        self.app.push_screen(ConfirmScreen("Accept the embedding change", question, "Accept"), confirmed)

    async def action_leave(self) -> None:
        if not self.finished:
            self.notify("apply is still running; it finishes (or rolls back) on its own", severity="warning")
            return
        # Back past the profile list to the overview, where the new instances show up.
        while len(self.app.screen_stack) > 1:
            await self.app.pop_screen()
