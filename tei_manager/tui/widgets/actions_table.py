"""The diff of a plan against what runs: one row per instance, create / replace / keep / remove."""

from __future__ import annotations

from textual.widgets import DataTable

from tei_manager.core.diff import Action
from tei_manager.tui import formatting as fmt
from tei_manager.tui.widgets.cells import plain, styled

# Where each instance goes and what it costs first; at 80 columns the rest is one scroll away.
COLUMNS = ("Action", "Instance", "Device", "Port", "VRAM", "Runtime", "Model", "Why")
_STYLE = {"create": "$success", "replace": "$warning", "remove": "$error", "keep": "dim"}


class ActionsTable(DataTable[object]):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        for column in COLUMNS:
            self.add_column(column, key=column)

    def show(self, actions: tuple[Action, ...] | list[Action]) -> None:
        self.clear()
        for action in actions:
            inst = action.desired or (action.observed.plan if action.observed else None)
            cells = (
                action.name,
                inst.device if inst else fmt.UNKNOWN,
                str(inst.host_port) if inst else fmt.UNKNOWN,
                fmt.mib(inst.vram.total_mib) if inst and inst.vram else fmt.UNKNOWN,
                inst.runtime if inst else fmt.UNKNOWN,
                fmt.short_model(inst.served_model_name) if inst else fmt.UNKNOWN,
                action.reason,
            )
            self.add_row(styled(self, action.kind, _STYLE[action.kind]), *(plain(c) for c in cells),
                         key=f"{action.kind}:{action.name}")
