"""Per-tenant traffic from the gateway, or a plain line saying the gateway is not running."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tei_manager.tui import formatting as fmt
from tei_manager.tui.gateway_stats import GatewayStats
from tei_manager.tui.widgets.cells import plain, styled

COLUMNS = ("Tenant", "QPS", "p99", "Rejected", "Rejected/s", "Quota use")


class TenantsPanel(Vertical):
    """A table while the gateway answers; a one-line reason while it does not."""

    DEFAULT_CSS = """
    TenantsPanel { height: auto; }
    TenantsPanel > DataTable { height: auto; max-height: 8; }
    TenantsPanel > #gateway-state { color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static("waiting for the gateway…", id="gateway-state", markup=False)
        table: DataTable[object] = DataTable(id="tenants-table", cursor_type="none", show_cursor=False)
        table.display = False
        yield table

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)

    def show_unavailable(self, reason: str) -> None:
        self.query_one(DataTable).display = False
        state = self.query_one("#gateway-state", Static)
        state.update(f"{reason} — start it with `tei-manager serve` to see per-tenant traffic")
        state.display = True

    def show(self, stats: GatewayStats) -> None:
        table = self.query_one(DataTable)
        state = self.query_one("#gateway-state", Static)
        table.clear()
        for row in stats.tenants:
            quota = fmt.percent(row.quota_use)
            table.add_row(
                plain(row.tenant),
                plain(fmt.rate(row.qps)),
                plain(fmt.millis(row.p99_s)),
                styled(self, str(row.rejections), "$error") if row.rejections else plain("0"),
                plain(fmt.rate(row.rejected_qps)),
                plain(quota) if row.quota_use is None else styled(self, quota, fmt.level(row.quota_use)),
                key=row.tenant,
            )
        if stats.tenants:
            state.display = False
        else:
            state.update("the gateway is up; no tenant has sent a request yet")
            state.display = True
        table.display = bool(stats.tenants)
