"""`tei-manager tune`: measure a profile's deployments and recommend (or `--write`) their tuning.

Thin: the measuring is `tei_manager.services.tune_profile`; this module parses the options, shows
progress bars and the report, saves it, and writes the chosen values back when asked.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from tei_manager.cli.options import backend_option, with_backend_options
from tei_manager.cli.output import console, err_console
from tei_manager.services import Options, tune_profile
from tei_manager.tune import report, writeback
from tei_manager.tune.runner import TuneResult, parse_budget
from tei_manager.tune.session import TuneError, TuneOptions, parse_space
from tei_manager.tune.trial import Schedule


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)


@with_backend_options
def tune_command(
    profile: Path = typer.Argument(..., help="Profile YAML file."),
    deployment: Optional[list[str]] = typer.Option(
        None, "--deployment", "-d", help="A deployment to tune (repeatable); default: every deployment."),
    slo_p99_ms: float = typer.Option(..., "--slo-p99-ms", help="The p99 latency target per request, in ms."),
    workload: Optional[Path] = typer.Option(
        None, "--workload", help="The tenant's texts: JSONL ({\"text\": ...} or {\"query\": ..., \"documents\": "
        "[...]}) or plain text, one input per line. Default: a synthetic English and Chinese mix."),
    budget: str = typer.Option("10m", "--budget", help="Time for the whole tune, e.g. 90s, 10m, 1h30m."),
    write: bool = typer.Option(False, "--write", help="Write the chosen values into the profile (comments kept)."),
    full_grid: bool = typer.Option(
        False, "--full-grid", help="Also measure every point of the space, to compare the search with it "
        "(takes as long as the grid needs, beyond --budget)."),
    out: Path = typer.Option(Path("tune-report"), "--out", help="Folder for tune.json and one PNG per deployment."),
    space: Optional[list[str]] = typer.Option(
        None, "--space", help="Narrow one dimension of the search, e.g. max_batch_tokens=1024,4096 (repeatable)."),
    step_seconds: float = typer.Option(3.0, "--step-seconds", help="Seconds measured per concurrency level."),
    max_concurrency: int = typer.Option(64, "--max-concurrency", help="Most requests in flight in a trial."),
    confirm_rounds: int = typer.Option(
        2, "--confirm-rounds", help="Times the leading settings (and the current one) are measured again, "
        "one step of 3 x --step-seconds each, before one is chosen; 0: decide on single trials."),
    backend: str = backend_option(),
    *,
    backend_options: Options,
) -> None:
    """Measure PROFILE's deployments on temporary instances and find the settings that serve the most
    within --slo-p99-ms. Live instances are never touched; --write updates the profile."""
    if slo_p99_ms <= 0:
        raise TuneError(f"the SLO {slo_p99_ms:g} ms must be more than zero", where="--slo-p99-ms")
    try:
        budget_seconds = parse_budget(budget)
    except ValueError as exc:
        raise TuneError(str(exc), where="--budget") from None
    if step_seconds <= 0 or max_concurrency < 1 or confirm_rounds < 0:
        raise TuneError("--step-seconds must be more than zero, --max-concurrency at least 1 and "
                        "--confirm-rounds at least 0", where="--step-seconds/--max-concurrency/--confirm-rounds")
    options = TuneOptions(
        slo_p99_ms=slo_p99_ms, budget_seconds=budget_seconds, deployments=tuple(deployment or ()),
        workload_path=workload, full_grid=full_grid, narrow=parse_space(space or ()),
        schedule=Schedule(step_seconds=step_seconds, max_concurrency=max_concurrency, confirm_rounds=confirm_rounds),
    )
    try:
        with report.RichProgress(err_console) as progress:
            result = tune_profile(profile, options, backend=backend, backend_options=backend_options,
                                  progress=progress, on_note=lambda note: err_console.print(note, highlight=False))
            progress.finish()
    except KeyboardInterrupt:
        # The service removed every trial instance on its way out; nothing was written.
        err_console.print("interrupted: the trial instances were removed; nothing was written", highlight=False)
        raise typer.Exit(130) from None
    report.show(result, console)
    saved = report.save(result, out)
    console.print(f"report: {saved['json']}" + "".join(
        f", {path}" for key, path in saved.items() if key != "json"), highlight=False)
    if len(saved) == 1:
        console.print("no PNG plots: matplotlib is not installed (pip install 'tei-manager[tune]')", style="dim")
    if result.calibration_path is not None:
        console.print(f"peak memory recorded for the planner in {result.calibration_path}", highlight=False)
    if write:
        _write_back(profile, result)
    else:
        console.print("Nothing was written; --write puts the chosen values into the profile.", style="dim")


def _write_back(profile: Path, result: TuneResult) -> None:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    for dep in result.deployments:
        values = dep.recommended
        if values is None:
            err_console.print(f"[yellow]{dep.request.deployment}: no setting met the SLO; left as it is[/]",
                              highlight=False)
            continue
        writeback.write(profile, dep.request.deployment, values, report.write_comment(dep, result.slo_p99_ms, date))
        console.print(f"wrote {dep.request.deployment}'s tuning into {profile}", highlight=False)
