"""The VRAM budget of a plan, one line per GPU: what the plan puts there against what is free."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from tei_manager.core.plan import GpuBudget, Plan
from tei_manager.tui import formatting as fmt

_BAR = 20


class BudgetView(Static):
    DEFAULT_CSS = "BudgetView { height: auto; }"

    def show(self, plan: Plan) -> None:
        if not plan.gpus:
            cpu = sum(1 for inst in plan.instances if inst.gpu is None)
            self.update(Content.from_markup("[b]no GPU in this plan[/b] [dim]— $n on CPU[/]", n=_count(cpu)))
            return
        self.update(Content("\n").join(_line(gpu) for gpu in plan.gpus))


def _line(gpu: GpuBudget) -> Content:
    fraction = gpu.planned_mib / gpu.budget_mib if gpu.budget_mib > 0 else 1.0
    over = gpu.free_after_plan_mib < 0
    left = f"{fmt.mib(-gpu.free_after_plan_mib)} OVER" if over else f"{fmt.mib(gpu.free_after_plan_mib)} left"
    return Content.from_markup(
        f"[b]GPU $index[/b] $name {fmt.bar(fraction, _BAR)} $planned of $budget "
        f"[{'$error' if over else 'dim'}]($left)[/]\n"
        "  [dim]total $total − headroom $headroom − other processes $others · $instances[/]",
        index=str(gpu.index),
        name=gpu.name,
        planned=fmt.mib(gpu.planned_mib),
        budget=fmt.mib(gpu.budget_mib),
        left=left,
        total=fmt.mib(gpu.total_mib),
        headroom=fmt.mib(gpu.headroom_mib),
        others=fmt.mib(gpu.in_use_mib),
        instances=_count(len(gpu.instances)),
    )


def _count(instances: int) -> str:
    return {0: "nothing placed", 1: "1 instance"}.get(instances, f"{instances} instances")
