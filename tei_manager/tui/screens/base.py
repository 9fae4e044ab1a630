"""What every full screen of the dashboard shares: the app's services, and loud worker failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen
from textual.worker import Worker, WorkerState

if TYPE_CHECKING:
    from tei_manager.tui.app import TeiManagerApp


class TuiScreen(Screen[None]):
    """Base of the dashboard's screens.

    Workers catch the errors users cause (TeiManagerError) and post them as messages.  Anything
    else is a bug; `exit_on_error=False` keeps the dashboard alive, and this makes sure it is
    still seen instead of leaving a panel that silently never updates.
    """

    @property
    def tui(self) -> TeiManagerApp:
        return self.app  # type: ignore[return-value]

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            worker: Worker[object] = event.worker
            self.notify(f"{worker.name} failed: {worker.error!r}", title="unexpected error",
                        severity="error", timeout=10)
