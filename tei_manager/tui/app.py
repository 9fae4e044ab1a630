"""The Textual application: screens, global keys, theme and the services it drives."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.theme import Theme

from tei_manager.errors import TeiManagerError
from tei_manager.tui.services import TuiServices

# Built from the terminal's own 16 colours and default foreground/background: whatever the user
# set up for a light or a dark terminal is what the dashboard uses.  TEXTUAL_THEME overrides it.
TERMINAL_THEME = Theme(
    name="tei-manager",
    primary="ansi_blue",
    secondary="ansi_cyan",
    accent="ansi_magenta",
    warning="ansi_yellow",
    error="ansi_red",
    success="ansi_green",
    foreground="ansi_default",
    background="ansi_default",
    surface="ansi_default",
    panel="ansi_default",
    boost="ansi_default",
    dark=True,
    ansi=True,
    variables={
        "ansi-background": "ansi_default",
        "ansi-foreground": "ansi_default",
        "border": "ansi_blue",
        "border-blurred": "ansi_bright_black",
        "block-cursor-foreground": "ansi_default",
        "block-cursor-background": "ansi_blue",
        "block-cursor-text-style": "reverse",
        "block-cursor-blurred-text-style": "none",
        "block-hover-background": "ansi_default",
        "footer-key-foreground": "ansi_blue",
        "footer-description-foreground": "ansi_default",
        "footer-background": "ansi_default",
        "text-muted": "ansi_bright_black",
        "scrollbar": "ansi_bright_black",
        "scrollbar-background": "ansi_default",
        "scrollbar-corner-color": "ansi_default",
    },
)


class TeiManagerApp(App[None]):
    """`tei-manager tui`: overview first; every blocking call runs in a worker."""

    TITLE = "tei-manager"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("escape", "back", "Back", show=False),
    ]

    def __init__(self, services: TuiServices, *, refresh_interval_s: float | None = 2.0) -> None:
        super().__init__()
        self.services = services
        self.refresh_interval_s = refresh_interval_s
        self.register_theme(TERMINAL_THEME)
        self.theme = os.environ.get("TEXTUAL_THEME", TERMINAL_THEME.name)
        backend = services.backend_choice
        self.sub_title = f"{backend} backend"

    def get_default_screen(self) -> Screen[Any]:
        from tei_manager.tui.screens.overview import OverviewScreen

        return OverviewScreen()

    def action_help(self) -> None:
        from tei_manager.tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen))

    def show_error(self, title: str, error: TeiManagerError | str) -> None:
        from tei_manager.tui.screens.text import TextScreen

        body = error.render() if isinstance(error, TeiManagerError) else error
        self.push_screen(TextScreen(title, body, error=True))

    async def action_quit(self) -> None:
        """Quit; running instances stay up (the dashboard drives them, it does not own them).

        An apply cannot be interrupted halfway (its rollback must run), so quitting during one
        asks first: the terminal comes back only once the apply has finished or rolled back.
        """
        from tei_manager.tui.screens.confirm import ConfirmScreen

        applying = [w for w in self.workers if w.group == "apply" and w.is_running]
        if not applying:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit(message="waiting for the running apply to finish or roll back…")

        await self.push_screen(ConfirmScreen(
            "Quit during apply",
            "An apply is running. Quit anyway? It goes on until its instances are healthy or rolled "
            "back, and the terminal returns then.",
            "Quit",
        ), answered)

    def on_unmount(self) -> None:
        self.services.close()
