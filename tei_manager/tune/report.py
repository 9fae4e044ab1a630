"""What a tune shows: a table, a plot (PNG and a text chart for the terminal), a JSON report, progress bars.

The plot puts every measured setting at (p99 latency, throughput) at its best concurrency within the
SLO: up and to the left is better, the dashed vertical line is the SLO, the star is the chosen
setting, the square the profile's current one. Settings that never met the SLO sit right of the
line at concurrency 1; infeasible ones (OOM, crash, 5xx storm) have no point and are listed below.

Figures from the confirmation round (the median of longer re-measurements) are shown beside each
trial's own figure, with their spread, and the choice and the comparison with the grid use them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from typing_extensions import Self

from .runner import DeploymentResult, TuneResult
from .search import Value
from .trial import Step, TrialResult

REPORT_VERSION = 2
MiB = 1 << 20


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def plotted_step(trial: TrialResult) -> Step | None:
    """The step a setting is drawn at: its best within the SLO, else its first (lowest concurrency)."""
    if not trial.feasible or not trial.steps:
        return None
    return trial.best or trial.steps[0]


def settings_label(settings: Mapping[str, Value], space_keys: Sequence[str]) -> str:
    return " ".join(f"{short_key(k)}={settings[k]}" for k in space_keys if k in settings)


_SHORT = {"max_batch_tokens": "tokens", "max_client_batch_size": "client", "max_batch_requests": "requests",
          "forward_workers": "workers", "max_concurrent_requests": "permits", "dtype": "dtype"}


def short_key(key: str) -> str:
    return _SHORT.get(key, key)


def _keys(result: DeploymentResult) -> list[str]:
    return [d.name for d in result.request.space.dimensions]


def _all_trials(result: DeploymentResult) -> list[tuple[str, TrialResult]]:
    """The current setting, then every distinct setting measured (search, then the grid's extra points)."""
    seen: set[int] = set()
    out: list[tuple[str, TrialResult]] = [("current", result.current)]
    for phase, trials in (("search", result.search), ("grid", result.grid or [])):
        for t in trials:
            if id(t) not in seen:
                seen.add(id(t))
                out.append((phase, t))
    return out


def _status(trial: TrialResult, chosen: TrialResult | None) -> str:
    if trial.infeasible:
        return f"[red]infeasible: {trial.infeasible}[/]"
    if not trial.meets_slo:
        return "[yellow]misses the SLO at concurrency 1[/]"
    return "[bold green]chosen[/]" if trial is chosen else "ok"


def _confirmed_cells(result: DeploymentResult, trial: TrialResult) -> tuple[str, str]:
    confirmed = result.confirmed(trial)
    if confirmed is None:
        return "-", ""
    return f"{confirmed.median:,.1f}", f"{confirmed.low:,.1f}-{confirmed.high:,.1f} ({len(confirmed.figures)})"


def table(result: DeploymentResult, slo_p99_ms: float) -> Table:
    keys = _keys(result)
    t = Table(title=f"{result.request.deployment}: throughput at p99 <= {slo_p99_ms:g} ms on {result.device}")
    t.add_column("trial")
    for key in keys:
        t.add_column(short_key(key), justify="right")
    for label in ("inputs/s", "confirmed", "spread (n)", "concurrency", "p50 ms", "p99 ms", "peak MiB", ""):
        t.add_column(label, justify="right" if label else "left")
    chosen = result.chosen
    for phase, trial in _all_trials(result):
        best = trial.best if trial.feasible else None
        t.add_row(
            phase, *(str(trial.settings.get(k, trial.reported.get(k, "default"))) for k in keys),
            f"{trial.throughput:,.1f}", *_confirmed_cells(result, trial), str(best.concurrency) if best else "-",
            _ms(best.p50_ms if best else None), _ms(best.p99_ms if best else None),
            _mib(trial.peak_memory_bytes), _status(trial, chosen),
        )
    if result.confirmations:
        t.caption = (f"inputs/s: the trial's own figure; confirmed: median of the confirmation round's "
                     f"{result.request.schedule.confirm_seconds:g}-second re-measurements (the figure "
                     "compared), spread: lowest-highest (how many)")
    return t


def _figure(result: DeploymentResult, trial: TrialResult) -> str:
    """A setting's figure as compared: confirmed (median, spread) or its single trial."""
    confirmed = result.confirmed(trial)
    if confirmed is not None:
        return f"{confirmed.describe()}, confirmed"
    return f"{trial.throughput:,.1f} inputs/s (one trial, not confirmed)"


def summary_lines(result: DeploymentResult) -> list[str]:
    lines = []
    chosen = result.chosen
    outside = result.current_outside_space
    if outside:
        lines.append(f"{result.request.deployment}: the current setting runs at {'; '.join(outside)}, outside the "
                     "searched space: it was measured as the profile has it, and the gain is against that")
    if chosen is None:
        lines.append(f"{result.request.deployment}: no setting met the SLO; relax it or give the deployment "
                     "a faster device")
        return lines
    rec = result.recommended or {}
    shown = settings_label(rec, [*_keys(result), "max_concurrent_requests"])
    lines.append(f"{result.request.deployment}: chosen {shown}"
                 f" -> {_figure(result, chosen)}, p99 {_ms(chosen.best.p99_ms if chosen.best else None)} ms")
    gain = result.gain
    now = _figure(result, result.current)
    if chosen is result.current:
        lines.append(f"  gain over the current setting: none ({now} now); "
                     "nothing the search measured beat it: keep it (permits as recommended)")
    elif gain is not None:
        lines.append(f"  gain over the current setting: {gain:+.0%} ({now} now)")
    elif not result.current.meets_slo:
        lines.append("  the current setting does not meet the SLO"
                     + (f" ({result.current.infeasible})" if result.current.infeasible else ""))
    third = result.request.space.size / 3
    used = len(result.search) + result.search_confirmations
    lines.append(f"  {len(result.search)} search trials + {result.search_confirmations} confirmations of its leaders "
                 f"= {used} of a {result.request.space.size}-point space (a third: {third:.0f})"
                 + (" (stopped by the time budget)" if result.search_stopped_early else "")
                 + (" (stopped at the trial cap)" if result.search_capped else ""))
    if result.confirmations:
        lines.append(f"  confirmation round: {result.confirmation_trials} re-measurements of "
                     f"{len(result.confirmations)} settings, {result.request.schedule.confirm_seconds:g} s each, "
                     "in turn; settings are compared on the median")
    grid_best = result.grid_best
    ratio = result.search_vs_grid
    if result.grid is not None and grid_best is not None and ratio is not None:
        lines.append(f"  full grid: {len(result.grid)} trials, best {_figure(result, grid_best)}; "
                     f"the search reached {ratio:.1%} of it with {used} trials")
    return lines


def text_chart(result: DeploymentResult, slo_p99_ms: float, *, width: int = 60, height: int = 14) -> str:
    """Throughput (up) against p99 (right) in characters: ``o`` a setting, ``*`` chosen, ``#`` current,
    ``|`` the SLO."""
    points: list[tuple[float, float, str]] = []
    chosen = result.chosen
    for phase, trial in _all_trials(result):
        step = plotted_step(trial)
        if step is None or step.p99_ms is None:
            continue
        mark = "*" if trial is chosen else "#" if phase == "current" else "o"
        points.append((step.p99_ms, step.throughput, mark))
    if not points:
        return "(no setting produced a measurement)"
    x_max = max(max(p[0] for p in points), slo_p99_ms) * 1.1
    y_max = max(p[1] for p in points) * 1.1 or 1.0
    canvas = [[" "] * width for _ in range(height)]
    slo_col = min(width - 1, int(slo_p99_ms / x_max * (width - 1)))
    for cells in canvas:
        cells[slo_col] = "|"
    # Draw the chosen and current marks last so that they are never hidden.
    for x, y, mark in sorted(points, key=lambda p: p[2] != "o"):
        col = min(width - 1, int(x / x_max * (width - 1)))
        row = height - 1 - min(height - 1, int(y / y_max * (height - 1)))
        canvas[row][col] = mark
    label = f"{y_max:,.0f}"
    pad = len(label)
    lines = [f"{label if i == 0 else '0'.rjust(pad) if i == height - 1 else ' ' * pad} |{''.join(r)}"
             for i, r in enumerate(canvas)]
    lines.append(" " * pad + " +" + "-" * width)
    axis = f"0 ms{'p99 SLO ' + _ms(slo_p99_ms) + ' ms':^{max(0, width - 14)}}{_ms(x_max)} ms"
    lines.append(" " * (pad + 2) + axis)
    lines.append(" " * (pad + 2) + "inputs/s (up) vs p99 (right); * chosen, # current, o other settings")
    return "\n".join(lines)


def plot_png(result: DeploymentResult, slo_p99_ms: float, path: Path) -> Path:
    """The same plot as a PNG (matplotlib, Agg backend), with each setting's concurrency steps as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    chosen = result.chosen
    keys = _keys(result)
    infeasible: list[str] = []
    confirmed_shown = False
    for phase, trial in _all_trials(result):
        step = plotted_step(trial)
        if step is None or step.p99_ms is None:
            infeasible.append(f"{settings_label(trial.settings, keys)}: {trial.infeasible or 'no measurement'}")
            continue
        xs = [s.p99_ms for s in trial.steps if s.p99_ms is not None]
        ys = [s.throughput for s in trial.steps if s.p99_ms is not None]
        ax.plot(xs, ys, color="0.8", linewidth=0.8, zorder=1)
        confirmed = result.confirmed(trial)
        if confirmed is not None:
            # The confirmation round's figures at the same p99: the diamond is the median that was
            # compared, the bar the lowest to the highest re-measurement.
            ax.errorbar([step.p99_ms], [confirmed.median],
                        yerr=[[confirmed.median - confirmed.low], [confirmed.high - confirmed.median]],
                        fmt="D", markersize=5, color="tab:purple", capsize=3, zorder=3,
                        label="confirmed median (lowest-highest)" if not confirmed_shown else None)
            confirmed_shown = True
        if trial is chosen:
            ax.scatter([step.p99_ms], [step.throughput], marker="*", s=260, color="tab:green", zorder=4,
                       label=f"chosen: {settings_label(trial.settings, keys)}")
        elif phase == "current":
            ax.scatter([step.p99_ms], [step.throughput], marker="s", s=80, color="tab:orange", zorder=3,
                       label="current setting")
        else:
            ax.scatter([step.p99_ms], [step.throughput], s=28, color="tab:blue", zorder=2)
    ax.axvline(slo_p99_ms, color="tab:red", linestyle="--", label=f"p99 SLO {slo_p99_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (inputs/s)")
    ax.set_title(f"{result.request.deployment} on {result.device}: one point per setting, at its best concurrency")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if infeasible:
        fig.text(0.01, 0.01, "infeasible: " + "; ".join(infeasible)[:300], fontsize=7, color="tab:red")
    fig.tight_layout(rect=(0, 0.04 if infeasible else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _confirmed_json(result: DeploymentResult, trial: TrialResult) -> dict[str, object] | None:
    confirmed = result.confirmed(trial)
    return None if confirmed is None else confirmed.to_json()


def to_json(result: TuneResult) -> dict[str, Any]:
    deployments = []
    for r in result.deployments:
        chosen = r.chosen
        grid_best = r.grid_best
        deployments.append({
            "deployment": r.request.deployment,
            "model": r.request.model,
            "runtime": r.request.runtime,
            "device": r.device,
            "workload": r.request.workload.describe(),
            "space": {d.name: list(d.values) for d in r.request.space.dimensions},
            "fixed": dict(r.request.space.fixed),
            "grid_size": r.request.space.size,
            "current": {**r.current.to_json(), "confirmed": _confirmed_json(r, r.current)},
            "current_outside_space": r.current_outside_space,
            "chosen": {**chosen.to_json(), "confirmed": _confirmed_json(r, chosen)} if chosen else None,
            "recommended": r.recommended,
            "gain": None if r.gain is None else round(r.gain, 4),
            "search_trials": len(r.search),
            "search_trials_with_confirmations": len(r.search) + r.search_confirmations,
            "search_stopped_early": r.search_stopped_early,
            "search_capped": r.search_capped,
            "grid": None if r.grid is None else {
                "trials": len(r.grid),
                "best": {**grid_best.to_json(), "confirmed": _confirmed_json(r, grid_best)} if grid_best else None,
                "search_vs_grid": None if r.search_vs_grid is None else round(r.search_vs_grid, 4),
                # Whether the comparison is between confirmed medians or single trials.
                "basis": ("confirmed" if r.search_best and grid_best and r.confirmed(r.search_best)
                          and r.confirmed(grid_best) else "single trials"),
            },
            "trials": [{"phase": phase, **t.to_json(), "confirmed": _confirmed_json(r, t)}
                       for phase, t in _all_trials(r)],
            "confirmation": {
                "rounds": r.request.schedule.confirmations_per_setting,
                "seconds_each": r.request.schedule.confirm_seconds,
                "trials": r.confirmation_trials,
                "of_search_leaders": r.search_confirmations,
                "measurements": [{"settings": dict(k), "trials": [t.to_json() for t in ts]}
                                 for k, ts in r.confirmations.items()],
            },
            "seconds": round(r.seconds, 1),
        })
    colocation = None
    if result.capacity_bytes is not None:
        colocation = {
            "capacity_bytes": result.capacity_bytes,
            "fits": result.colocation is not None,
            "total_peak_bytes": result.colocation.total_bytes if result.colocation else None,
            "headroom_bytes": result.colocation.headroom_bytes if result.colocation else None,
        }
    return {
        "version": REPORT_VERSION,
        "slo_p99_ms": result.slo_p99_ms,
        "budget_seconds": result.budget_seconds,
        "seconds": round(result.seconds, 1),
        "deployments": deployments,
        "colocation": colocation,
        "calibration": str(result.calibration_path) if result.calibration_path else None,
    }


def save(result: TuneResult, out_dir: Path) -> dict[str, Path]:
    """Write ``tune.json`` and one ``<deployment>.png`` per deployment into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "tune.json"}
    written["json"].write_text(json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        import matplotlib  # noqa: F401 - only to know whether the PNGs can be drawn
    except ImportError:
        return written  # no plots without the `tune` extra; the JSON and the terminal chart hold the same data
    for r in result.deployments:
        written[r.request.deployment] = plot_png(r, result.slo_p99_ms, out_dir / f"{r.request.deployment}.png")
    return written


def show(result: TuneResult, console: Console) -> None:
    """Everything for the terminal: per deployment a table, the summary and the text chart."""
    for r in result.deployments:
        console.print(table(r, result.slo_p99_ms))
        for line in summary_lines(r):
            console.print(line, highlight=False)
        console.print(text_chart(r, result.slo_p99_ms), highlight=False, markup=False)
    if result.capacity_bytes is not None:
        if result.colocation is None:
            console.print("[red]co-located: no combination of measured settings fits "
                          f"{_mib(result.capacity_bytes)} MiB[/]")
        else:
            console.print(f"co-located: peaks {_mib(result.colocation.total_bytes)} MiB of "
                          f"{_mib(result.capacity_bytes)} MiB, headroom {_mib(result.colocation.headroom_bytes)} MiB")


def write_comment(result: DeploymentResult, slo_p99_ms: float, date: str) -> str:
    """The line `--write` puts above ``tuning:``: date, SLO and the measured figures."""
    chosen = result.chosen
    assert chosen is not None and chosen.best is not None
    text = (f"{date}: p99 SLO {slo_p99_ms:g} ms; {result.score(chosen):,.1f} inputs/s at p99 "
            f"{_ms(chosen.best.p99_ms)} ms (concurrency {chosen.best.concurrency}), peak "
            f"{_mib(chosen.peak_memory_bytes)} MiB on {result.device}")
    if result.gain is not None:
        text += f"; {result.gain:+.0%} over the previous setting"
    return text


class RichProgress:
    """Progress bars while a tune runs: one per deployment, advancing with each trial."""

    def __init__(self, console: Console | None = None, expected_trials: int = 12) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} trials"),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.expected = expected_trials
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, deployment: str) -> TaskID:
        if deployment not in self.tasks:
            self.tasks[deployment] = self.progress.add_task(deployment, total=self.expected)
        return self.tasks[deployment]

    def trial_started(self, deployment: str, phase: str, settings: Mapping[str, Value]) -> None:
        task = self._task(deployment)
        shown = " ".join(f"{short_key(k)}={v}" for k, v in settings.items() if k != "max_concurrent_requests")
        self.progress.update(task, description=f"{deployment} [{phase}] {shown}")

    def _completed(self, task: TaskID) -> int:
        return int(next(t.completed for t in self.progress.tasks if t.id == task))

    def trial_finished(self, deployment: str, phase: str, result: TrialResult) -> None:
        task = self._task(deployment)
        done = self._completed(task) + 1
        total = max(self.expected, done + 1)
        self.progress.update(task, completed=done, total=total,
                             description=f"{deployment} [{phase}] {result.throughput:,.1f} inputs/s"
                             + (f" (infeasible: {result.infeasible})" if result.infeasible else ""))

    def finish(self) -> None:
        for task in self.tasks.values():
            self.progress.update(task, total=self._completed(task))
