"""The instances table: one row per instance, keyed so that the cursor survives refreshes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from tei_manager.models.fingerprint import Fingerprint
from tei_manager.orchestrator import InstanceStatus
from tei_manager.tui import formatting as fmt
from tei_manager.tui.gateway_stats import InstanceTraffic
from tei_manager.tui.widgets.cells import clip, plain, styled

# What tells a problem apart comes first: at 80 columns Tenant, Model, Runtime and Fingerprint
# are one scroll to the right (→), on wider terminals everything is visible.  "Rst" = restarts;
# "Fingerprint" = the age of the deployment's embedding fingerprint and its last accepted drift.
COLUMNS = ("Instance", "Health", "Device", "Port", "Up", "Rst", "QPS", "p99", "VRAM",
           "Tenant", "Model", "Runtime", "Fingerprint")

_HEALTH_STYLE = {"healthy": "$success", "running": "$success", "starting": "$warning",
                 "created": "$warning", "restarting": "$warning"}


def row_key(row: InstanceStatus) -> str:
    """Instance names are unique within a profile only; two profiles may both have a `demo-embed`."""
    return f"{row.profile}/{row.name}"


def health_text(row: InstanceStatus) -> str:
    """`status` says "-" for an instance that is not running; its state says more."""
    return row.state if row.health == "-" else row.health


def health_style(health: str) -> str:
    """Healthy is calm, anything on its way is a warning, everything else an error."""
    return _HEALTH_STYLE.get(health.split(":")[0], "$error")


def fingerprint_text(recorded: Fingerprint | None, now: datetime) -> str:
    if recorded is None:
        return fmt.UNKNOWN
    drift = recorded.last_drift
    return fmt.fingerprint(recorded.age_s(now.timestamp()), drift.measure if drift else None,
                           drift.worst if drift else None)


class InstancesTable(DataTable[object]):
    """Rows are `status` rows merged with the gateway's per-instance traffic."""

    # DataTable's own Enter binding is hidden; this one says in the footer what Enter does.
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Instance")]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for column in COLUMNS:
            self.add_column(column, key=column)

    def show(
        self,
        rows: list[InstanceStatus],
        now: datetime,
        traffic: Mapping[str, InstanceTraffic],
        fingerprints: Mapping[tuple[str, str], Fingerprint] | None = None,
    ) -> None:
        selected = self.selected_key
        self.clear()
        for row in rows:
            seen = traffic.get(row.name)
            health = health_text(row)
            recorded = (fingerprints or {}).get((row.profile, row.deployment))
            cells = (
                fmt.UNKNOWN if row.port is None else str(row.port),
                fmt.duration(row.uptime_s(now)),
                str(row.restarts),
                fmt.rate(seen.qps if seen else None),
                fmt.millis(seen.p99_s if seen else None),
                fmt.mib(row.gpu_memory_mib) if row.gpu_memory_mib else fmt.UNKNOWN,
                row.tenant,
                fmt.short_model(row.model),
                row.runtime,
                fingerprint_text(recorded, now),
            )
            self.add_row(
                plain(row.name),
                styled(self, clip(health, 12), health_style(health)),
                plain(row.device),
                *(plain(cell) for cell in cells),
                key=row_key(row),
            )
        if selected is not None and selected in {row_key(r) for r in rows}:
            self.move_cursor(row=self.get_row_index(selected))

    @property
    def selected_key(self) -> str | None:
        """`row_key` of the row under the cursor."""
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return None if key.value is None else str(key.value)
