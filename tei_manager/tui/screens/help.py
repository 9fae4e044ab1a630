"""`?`: what the current screen is for and every key it answers to."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Label, Static

from tei_manager.tui.widgets.cells import plain


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, screen: Screen[object]) -> None:
        super().__init__()
        self._about = getattr(screen, "HELP", "") or ""
        # Bindings as they stand on the screen being helped (its own, its widgets' and the app's),
        # one line per action with every key that does it.
        keys: dict[str, list[str]] = {}
        for active in screen.active_bindings.values():
            binding = active.binding
            if binding.description:
                shown = binding.key_display or screen.app.get_key_display(binding)
                keys.setdefault(binding.description, []).append(shown)
        self._keys = {", ".join(dict.fromkeys(k)): description for description, k in keys.items()}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as dialog:
            dialog.border_title = "Help"
            if self._about:
                yield Static(self._about, markup=False, id="help-about")
            table: DataTable[object] = DataTable(cursor_type="none", show_cursor=False, id="help-keys")
            table.add_columns("Key", "Does")
            for key, description in self._keys.items():
                table.add_row(plain(key), plain(description))
            yield table
            yield Label("[dim]Esc closes[/]")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
