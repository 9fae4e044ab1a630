"""One line per GPU: name, memory used/total as a bar, utilisation; or why there is none."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from tei_manager.core.facts import GpuFact, HostFacts
from tei_manager.tui import formatting as fmt

_NAME_WIDTH = 18


class GpuPanel(Static):
    """Renders the latest HostFacts it was given; the screen's worker does the probing."""

    DEFAULT_CSS = """
    GpuPanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("probing GPUs…", id=id, markup=False)
        self._facts: HostFacts | None = None

    def show(self, facts: HostFacts) -> None:
        self._facts = facts
        self.update(self._content())

    def on_resize(self) -> None:
        if self._facts is not None:
            self.update(self._content())  # the bar follows the width

    def _content(self) -> Content:
        facts = self._facts
        if facts is None or not facts.gpus:
            reason = facts.nvml_error if facts is not None and facts.nvml_error else "NVML lists none"
            return Content.from_markup("[b]no GPU[/b] [dim]($reason) — instances run on CPU[/]", reason=reason)
        return Content("\n").join(self._line(gpu) for gpu in facts.gpus)

    def _line(self, gpu: GpuFact) -> Content:
        used = None if gpu.free_mib is None else gpu.total_mib - gpu.free_mib
        memory = fmt.used_of(used, gpu.total_mib)
        util = "util " + (fmt.UNKNOWN if gpu.utilization_pct is None else f"{gpu.utilization_pct}%")
        name = gpu.name if len(gpu.name) <= _NAME_WIDTH else gpu.name[: _NAME_WIDTH - 1] + "…"
        # index, name, bar, memory, utilisation; the bar takes whatever width is left.
        fixed = 2 + 1 + _NAME_WIDTH + 1 + 1 + 17 + 1 + 8
        width = max(self.size.width - fixed, 6)
        fraction = None if used is None else used / gpu.total_mib
        return Content.from_markup(
            f"[b]{gpu.index}[/b] $name {fmt.bar(fraction, width)} $memory $util",
            name=f"{name:<{_NAME_WIDTH}}",
            memory=f"{memory:>17}",
            util=f"{util:>8}",
        )
