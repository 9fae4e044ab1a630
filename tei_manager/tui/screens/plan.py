"""Apply, step 2: the plan, the VRAM budget per GPU and the diff against what runs; then confirm."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Footer, Header, Static

from tei_manager.tui.messages import PlanPrepared
from tei_manager.tui.screens.base import TuiScreen
from tei_manager.tui.services import PlanPreview
from tei_manager.tui.widgets.actions_table import ActionsTable
from tei_manager.tui.widgets.budget import BudgetView


def summary(preview: PlanPreview) -> str:
    """`2 create · 1 keep`, or that nothing changes."""
    counts = Counter(action.kind for action in preview.actions)
    parts = [f"{counts[k]} {k}" for k in ("create", "replace", "remove", "keep") if counts[k]]
    changes = any(a.changes_something for a in preview.actions)
    return " · ".join(parts) + ("" if changes else "  (nothing to change)")


class PlanScreen(TuiScreen):
    HELP = (
        "Nothing has changed yet. The budget shows what the plan puts on each GPU; the table\n"
        "shows what apply would do to each instance. Press a to apply (you confirm first),\n"
        "t to tune a deployment (measured on temporary instances; nothing live changes)."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "apply", "Apply"),
        Binding("r", "replan", "Re-plan"),
        Binding("t", "tune", "Tune"),
        Binding("escape", "app.back", "Back"),
    ]

    def __init__(self, source: Path) -> None:
        super().__init__()
        self.source = source
        self.preview: PlanPreview | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll(id="plan-body"):
            yield Static(f"planning {self.source.name}…", id="plan-title", markup=False)
            yield Static("", id="plan-error", markup=False)
            with Vertical(classes="box", id="budget-box") as box:
                box.border_title = "VRAM budget"
                yield BudgetView(id="budget")
            with Vertical(classes="box", id="actions-box") as box:
                box.border_title = "Changes"
                yield ActionsTable(id="actions-table")
            yield Static("", id="plan-warnings", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self._show_parts(plan=False, error=False)
        self.action_replan()

    def _show_parts(self, *, plan: bool, error: bool) -> None:
        self.query_one("#plan-error").display = error
        self.query_one("#budget-box").display = plan
        self.query_one("#actions-box").display = plan
        self.query_one("#plan-warnings").display = plan

    def action_replan(self) -> None:
        self._prepare(self.source)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _prepare(self, source: Path) -> None:
        self.post_message(PlanPrepared(self.tui.services.preview(source)))

    def on_plan_prepared(self, message: PlanPrepared) -> None:
        preview = self.preview = message.preview
        title = self.query_one("#plan-title", Static)
        if preview.plan is None:
            title.update(f"{self.source.name}: cannot be planned on this host")
            error = preview.error.render() if preview.error else "unknown error"
            self.query_one("#plan-error", Static).update(error)
            self._show_parts(plan=False, error=True)
            return
        plan = preview.plan
        title.update(f"profile {plan.profile} ({self.source.name}) — {summary(preview)}")
        self.query_one(BudgetView).show(plan)
        self.query_one(ActionsTable).show(preview.actions)
        warnings = "\n".join(f"! {w}" for w in plan.warnings)
        self.query_one("#plan-warnings", Static).update(warnings)
        self._show_parts(plan=True, error=False)
        self.query_one("#plan-warnings").display = bool(plan.warnings)
        self.query_one(ActionsTable).focus()

    def action_apply(self) -> None:
        from tei_manager.tui.screens.confirm import ConfirmScreen
        from tei_manager.tui.screens.progress import ProgressScreen

        preview = self.preview
        if preview is None or preview.plan is None:
            self.notify("there is no plan to apply", severity="warning")
            return
        if not any(a.changes_something for a in preview.actions):
            self.notify("everything already runs as planned")
            return
        plan = preview.plan
        question = f"Apply {plan.profile}: {summary(preview)}?"
        if any(a.kind in ("replace", "remove") for a in preview.actions):
            question += "\nReplaced and removed instances stop serving while this runs."

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.app.switch_screen(ProgressScreen(plan, preview.actions, self.source))

        self.app.push_screen(ConfirmScreen(f"Apply {plan.profile}", question, "Apply"), confirmed)

    def action_tune(self) -> None:
        from tei_manager.tui.screens.tune import TuneScreen

        preview = self.preview
        if preview is None or preview.plan is None:
            self.notify("there is no plan to tune", severity="warning")
            return
        self.app.push_screen(TuneScreen(self.source, list(preview.plan.deployments())))
