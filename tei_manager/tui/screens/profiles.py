"""Apply, step 1: pick a profile from the profiles directory."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from tei_manager.tui.messages import ProfilesListed
from tei_manager.tui.screens.base import TuiScreen
from tei_manager.tui.services import ProfileEntry


class ProfilesScreen(TuiScreen):
    HELP = "Pick the profile to apply; the next screen shows its plan and changes nothing yet."
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.back", "Back"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._entries: list[ProfileEntry] = []

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(classes="box", id="profiles") as box:
            box.border_title = f"Profiles in {self.tui.services.profiles_dir}"
            yield Static("reading profiles…", id="profiles-state", classes="muted", markup=False)
            yield OptionList(id="profiles-list")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()
        self.action_reload()

    def action_reload(self) -> None:
        self._list()

    @work(thread=True, exclusive=True, group="profiles", exit_on_error=False)
    def _list(self) -> None:
        self.post_message(ProfilesListed(self.tui.services.profiles()))

    def on_profiles_listed(self, message: ProfilesListed) -> None:
        self._entries = message.profiles
        options = self.query_one(OptionList)
        options.clear_options()
        for index, entry in enumerate(message.profiles):
            options.add_option(Option(_label(entry), id=str(index), disabled=entry.error is not None))
        state = self.query_one("#profiles-state", Static)
        if message.profiles:
            state.update("Enter shows the plan; broken profiles are greyed out with their error.")
        else:
            state.update(f"no *.yaml profile in {self.tui.services.profiles_dir}")
        if message.profiles:
            options.highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        from tei_manager.tui.screens.plan import PlanScreen

        entry = self._entries[int(event.option.id or 0)]
        self.app.push_screen(PlanScreen(entry.path))


def _label(entry: ProfileEntry) -> Content:
    if entry.error is not None:
        first = entry.error.splitlines()[0]
        return Content.from_markup("[b]$name[/b]  [$error]$problem[/]", name=entry.path.name, problem=first)
    return Content.from_markup(
        "[b]$name[/b] [dim]($file)[/]  $description",
        name=entry.name, file=entry.path.name, description=entry.description,
    )
