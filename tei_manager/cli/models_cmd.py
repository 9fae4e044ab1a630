"""`tei-manager models pull|ls|rm|export|import`: the shared model cache (tei_manager.models.store)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from tei_manager.cli.output import console
from tei_manager.errors import ProfileError
from tei_manager.models.store import FileProgress, Pulled


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(help="Fetch, list, remove and move the models a profile serves.", no_args_is_help=True)
    models_app.command("pull")(pull_command)
    models_app.command("ls")(ls_command)
    models_app.command("rm")(rm_command)
    models_app.command("export")(export_command)
    models_app.command("import")(import_command)
    app.add_typer(models_app, name="models")


class PullProgress:
    """One rich bar per file, fed by FileProgress events from the download threads."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=console, transient=False)
        self.tasks: dict[tuple[str, str], TaskID] = {}

    def __call__(self, event: FileProgress) -> None:
        if not event.file:
            return
        key = (event.model, event.file)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{event.model}: {event.file}", total=event.total)
        self.progress.update(self.tasks[key], completed=event.done, total=event.total)

    def __enter__(self) -> PullProgress:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()


def print_pulled(pulled: list[Pulled]) -> None:
    for item in pulled:
        state = f"{item.fetched} of {item.files} files downloaded" if item.fetched else "already there"
        if item.source == "local directory":
            state = "local directory, nothing to fetch"
        console.print(f"[green]ok[/] {item.key}: {item.hub_id}@{item.revision} ({_size(item.size)}, {state}) "
                      f"-> {item.path}", highlight=False, soft_wrap=True)


def pull_command(
    profile: Path = typer.Argument(..., help="Profile YAML file."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, max=64,
                                       help="Files downloaded at once (default: the profile's hub.max_workers)."),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only this model key (repeatable)."),
) -> None:
    """Fetch every model PROFILE deploys, at its pinned revision, into the cache its instances mount.

    Interrupted pulls resume; every downloaded file is checked against the hub's checksum."""
    from tei_manager.models.store import pull
    from tei_manager.services import load

    loaded = load(profile)
    unknown = sorted(set(model or ()) - set(loaded.models))
    if unknown:
        raise ProfileError(f"no model {', '.join(unknown)} in the profile", where="--model",
                           fix=f"choose among {', '.join(sorted(loaded.models))}")
    with PullProgress() as bars:
        pulled = pull(loaded, keys=model or None, on_progress=bars, max_workers=jobs)
    print_pulled(pulled)


def _cache_of(profile: Optional[Path], directory: Optional[Path]) -> Path:
    from tei_manager.models.store import target
    from tei_manager.services import load

    if directory is not None:
        return directory
    if profile is None:
        raise ProfileError("say which cache", where="models", fix="give a PROFILE or --dir DIRECTORY")
    return target(load(profile))


def ls_command(
    profile: Optional[Path] = typer.Argument(None, help="Profile YAML file (its cache)."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="A cache directory instead of a profile's."),
) -> None:
    """List the models in a profile's cache (or --dir): revisions, size, unfinished downloads."""
    from tei_manager.models.store import complete, hub_models, list_cache
    from tei_manager.services import load

    cache = _cache_of(profile, directory)
    found = list_cache(cache)
    wanted = {s.id: s for s in hub_models(load(profile)).values()} if profile is not None else {}
    if not found and not wanted:
        console.print(f"no models in {cache}", highlight=False, soft_wrap=True)
        return
    table = Table(title=str(cache), title_justify="left")
    for column in ("model", "refs", "revisions", "size", "state"):
        table.add_column(column, overflow="fold")
    for item in found:
        spec = wanted.pop(item.hub_id, None)
        if item.incomplete:
            state = f"{item.incomplete} partial download(s): `models pull` resumes them"
        elif spec is not None:
            state = "complete" if complete(cache, spec) else "revision missing: run `models pull`"
        else:
            state = "not in the profile"
        table.add_row(item.hub_id, ", ".join(f"{k}={v[:10]}" for k, v in item.refs.items()),
                      ", ".join(r[:10] for r in item.revisions), _size(item.size), state)
    for hub_id in wanted:
        table.add_row(hub_id, "", "", "-", "missing: run `models pull`")
    console.print(table)


def rm_command(
    model_id: str = typer.Argument(..., help="Hub id, e.g. BAAI/bge-m3."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile whose cache to remove it from."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="A cache directory instead of a profile's."),
) -> None:
    """Remove a model (all its revisions) from a cache. Running instances keep what they loaded."""
    from tei_manager.models.store import remove

    cache = _cache_of(profile, directory)
    freed = remove(cache, model_id)
    console.print(f"[green]removed[/] {model_id} from {cache} ({_size(freed)} freed)", highlight=False,
                  soft_wrap=True)


def export_command(
    profile: Path = typer.Argument(..., help="Profile YAML file."),
    output: Path = typer.Option(..., "--output", "-o", help="Archive to write (.tar)."),
) -> None:
    """Write every model PROFILE deploys (pulled first when missing) into one archive for another host."""
    from tei_manager.models.archive import export_models
    from tei_manager.models.store import missing, pull
    from tei_manager.services import load

    loaded = load(profile)
    if missing(loaded):
        with PullProgress() as bars:
            pull(loaded, keys=missing(loaded), on_progress=bars)
    manifest = export_models(loaded, output)
    console.print(f"[green]exported[/] {len(manifest.models)} model(s) to {output} ({_size(output.stat().st_size)})",
                  highlight=False, soft_wrap=True)


def import_command(
    archive: Path = typer.Argument(..., help="Archive written by `models export`."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile whose cache to fill."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="A cache directory instead of a profile's."),
) -> None:
    """Unpack an archive of `models export` into a cache (no network needed); checksums are verified."""
    from tei_manager.models.archive import import_models

    cache = _cache_of(profile, directory)
    manifest = import_models(archive, cache)
    for item in manifest.models:
        console.print(f"[green]imported[/] {item.hub_id}@{item.revision} into {cache}", highlight=False,
                      soft_wrap=True)


def _size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
