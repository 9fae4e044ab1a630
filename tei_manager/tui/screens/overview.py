"""The overview: GPUs, instances and tenants, refreshed live by thread workers."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Static

from tei_manager.errors import TeiManagerError
from tei_manager.models.fingerprint import Fingerprint
from tei_manager.orchestrator import InstanceStatus
from tei_manager.tui.gateway_stats import GatewayStats
from tei_manager.tui.messages import ActionDone, GatewayScraped, HostProbed, InstancesObserved
from tei_manager.tui.screens.base import TuiScreen
from tei_manager.tui.services import GatewayUnavailable
from tei_manager.tui.widgets.gpu_panel import GpuPanel
from tei_manager.tui.widgets.instances_table import InstancesTable, row_key
from tei_manager.tui.widgets.tenants_table import TenantsPanel


class OverviewScreen(TuiScreen):
    """Start here: what the host has, what runs on it, and who sends traffic."""

    HELP = (
        "The overview refreshes by itself every few seconds.\n"
        "Pick an instance and press Enter for its log, restart, stop and /info.\n"
        "Press a to apply a profile, d to bring every instance down."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "apply", "Apply"),
        Binding("r", "refresh", "Refresh"),
        Binding("d", "down", "Down all"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._instances: list[InstanceStatus] = []
        self._fingerprints: dict[tuple[str, str], Fingerprint] = {}
        self._gateway: GatewayStats | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="gpus", classes="box") as box:
            box.border_title = "GPUs"
            yield GpuPanel(id="gpu-panel")
        with Vertical(id="instances", classes="box") as box:
            box.border_title = "Instances"
            yield Static("no instance found yet", id="instances-empty", classes="muted")
            yield InstancesTable(id="instances-table")
        with Vertical(id="tenants", classes="box") as box:
            box.border_title = "Tenants"
            yield TenantsPanel(id="tenants-panel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(InstancesTable).focus()
        interval = self.tui.refresh_interval_s
        if interval:
            self.set_interval(interval, self._tick)

    def on_screen_resume(self) -> None:
        self.action_refresh()  # on start, and on coming back from another screen: fresh at once

    def _tick(self) -> None:
        # Only while visible: the screens above poll what they show themselves.
        if self.is_current:
            self.action_refresh()

    # -- workers: one per source so a slow engine never holds up the GPU bars ---------------
    def action_refresh(self) -> None:
        self._probe()
        self._observe()
        self._scrape()

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def _probe(self) -> None:
        self.post_message(HostProbed(self.tui.services.probe()))

    @work(thread=True, exclusive=True, group="observe", exit_on_error=False)
    def _observe(self) -> None:
        services = self.tui.services
        try:
            rows = services.instances()
            self.post_message(InstancesObserved(rows, fingerprints=services.fingerprints(r.profile for r in rows)))
        except TeiManagerError as exc:
            self.post_message(InstancesObserved([], error=exc))

    @work(thread=True, exclusive=True, group="scrape", exit_on_error=False)
    def _scrape(self) -> None:
        try:
            self.post_message(GatewayScraped(self.tui.services.scrape_gateway()))
        except GatewayUnavailable as exc:
            self.post_message(GatewayScraped(None, reason=str(exc)))

    # -- results, on the UI thread ----------------------------------------------------------
    def on_host_probed(self, message: HostProbed) -> None:
        self.query_one(GpuPanel).show(message.facts)

    def on_instances_observed(self, message: InstancesObserved) -> None:
        self._instances = message.instances
        self._fingerprints = message.fingerprints
        empty = self.query_one("#instances-empty", Static)
        if message.error is not None:
            empty.update(f"cannot list instances: {message.error.render()}")
        else:
            empty.update("no instance runs — press a to apply a profile")
        empty.display = not message.instances
        self._render_instances()

    def on_gateway_scraped(self, message: GatewayScraped) -> None:
        panel = self.query_one(TenantsPanel)
        self._gateway = message.stats
        if message.stats is None:
            panel.show_unavailable(message.reason)
        else:
            panel.show(message.stats)
        self._render_instances()

    def _render_instances(self) -> None:
        traffic = self._gateway.instances if self._gateway else {}
        table = self.query_one(InstancesTable)
        table.display = bool(self._instances)
        table.show(self._instances, self.tui.services.now(), traffic, self._fingerprints)

    # -- actions ------------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#instances-table")
    def _open_instance(self) -> None:
        """Enter (or a click) on a row opens that instance."""
        from tei_manager.tui.screens.instance import InstanceScreen

        key = self.query_one(InstancesTable).selected_key
        row = next((r for r in self._instances if row_key(r) == key), None)
        if row is not None:
            self.app.push_screen(InstanceScreen(row))

    def action_apply(self) -> None:
        from tei_manager.tui.screens.profiles import ProfilesScreen

        self.app.push_screen(ProfilesScreen())

    def action_down(self) -> None:
        from tei_manager.tui.screens.confirm import ConfirmScreen

        if not self._instances:
            self.notify("nothing runs", severity="information")
            return
        profiles = sorted({r.profile for r in self._instances})
        question = f"Stop and remove every instance of {', '.join(profiles)}? The shared model cache stays."

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._down(profiles)

        self.app.push_screen(ConfirmScreen("Bring everything down", question, "Down"), confirmed)

    @work(thread=True, exclusive=True, group="down", exit_on_error=False)
    def _down(self, profiles: list[str]) -> None:
        try:
            for profile in profiles:
                self.tui.services.down(profile)
        except TeiManagerError as exc:
            self.post_message(ActionDone("down", "all", error=exc))
            return
        self.post_message(ActionDone("down", "all"))

    def on_action_done(self, message: ActionDone) -> None:
        if message.error is not None:
            self.tui.show_error(f"{message.action} failed", message.error)
        else:
            self.notify(f"{message.action} {message.target}: done")
        self.action_refresh()
