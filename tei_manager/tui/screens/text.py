"""A modal that shows a block of text: an error with its fix, or an instance's /info."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class TextScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,enter", "dismiss", "Close")]

    def __init__(self, title: str, body: str, *, error: bool = False) -> None:
        super().__init__()
        self._title = title
        self._body = body
        self._error = error

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error" if self._error else "dialog") as dialog:
            dialog.border_title = self._title
            with VerticalScroll():
                yield Static(self._body, markup=False, id="text-body")
            yield Label("[dim]Esc closes[/]")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
