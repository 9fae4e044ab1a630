"""`tei-manager plan` and `tei-manager profile validate|schema`: read-only commands.

They load a profile, read (or take) the host facts, run the pure planner and print what would run.
Nothing is started, stopped or written.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from tei_manager.cli.options import backend_option, with_backend_options
from tei_manager.cli.output import console, err_console
from tei_manager.core.catalog import UnknownModel, model_info
from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.errors import ProfileError, ProfileIssue, TeiManagerError
from tei_manager.models.sizing import LocalModelFiles, size_from_files
from tei_manager.runtimes.registry import get_runtime
from tei_manager.services import GPUS_HELP, Options, plan_profile


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
    profile_app = typer.Typer(help="Check profiles and show their schema.", no_args_is_help=True)
    profile_app.command("validate")(validate_command)
    profile_app.command("schema")(schema_command)
    app.add_typer(profile_app, name="profile")


# --- plan ---------------------------------------------------------------------------------------------


@with_backend_options
def plan_command(
    profile: Path = typer.Argument(..., help="Profile YAML file."),
    backend: str = backend_option(),
    gpus: Optional[str] = typer.Option(None, "--gpus", help=GPUS_HELP),
    docker: Optional[bool] = typer.Option(
        None, "--docker/--no-docker",
        help="Plan as if a Docker Engine with GPU support is (or is not) there; default: probe it.",
    ),
    cpu_arch: Optional[str] = typer.Option(
        None, "--cpu-arch", help="Plan for a host of this CPU architecture (x86_64 or arm64); default: this one.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the Plan as JSON."),
    *,
    backend_options: Options,
) -> None:
    """Show what `apply` would run for PROFILE on this host (or the host --gpus describes). Changes nothing."""
    result = make_plan(profile, gpus=gpus, docker=docker, cpu_arch=cpu_arch, backend=backend,
                       backend_options=backend_options)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    print_plan(result)


def make_plan(profile_path: Path | str, *, gpus: str | None = None, docker: bool | None = None,
              cpu_arch: str | None = None, backend: str = "auto", backend_options: Options | None = None) -> Plan:
    """The planning service behind `plan` (tei_manager.services.plan_profile)."""
    return plan_profile(profile_path, backend=backend, options=backend_options, gpus=gpus, docker=docker,
                        cpu_arch=cpu_arch)


def command_line(inst: InstancePlan) -> str:
    """The runtime's command line as the backend would start it (in a container for TEI)."""
    runtime = get_runtime(inst.runtime)
    # Shown as the image runs it, except for runtimes a process backend starts itself.
    in_container = runtime.executable is None
    return shlex.join([runtime.program, *inst.command(in_container=in_container)])


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value:,} MiB"



def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value / 1024**3:.1f}g" if value >= 1024**3 else str(value)


def _vram_cell(result: Plan, inst: InstancePlan) -> str:
    """The summary's VRAM column: the figure the budget used, `m` marking a measured one."""
    measured = result.measured_vram.get(inst.name)
    if measured is not None:
        return f"{measured.total_mib:,} m"
    return f"{inst.vram.total_mib:,}" if inst.vram else "-"


def print_plan(result: Plan) -> None:
    host = "described host (--gpus)" if result.host == "described" else "this host"
    console.print(f"[bold]Plan for profile {result.profile}[/] on {host}"
                  + (f"  ({result.source})" if result.source else ""), highlight=False)
    # Compact enough for 80 columns: the bind address, image and command are in the details below.
    summary = Table(title="Instances", box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold underline")
    for column in ("instance", "tenant", "model", "task", "runtime", "device", "port", "VRAM MiB"):
        summary.add_column(column, overflow="fold", justify="right" if column == "VRAM MiB" else "left")
    for inst in result.instances:
        summary.add_row(inst.name, inst.tenant + (" (shared)" if inst.shared else ""), inst.model_key,
                        inst.task, inst.runtime, inst.device, str(inst.host_port),
                        _vram_cell(result, inst))
    console.print(summary)
    for inst in result.instances:
        detail = Table(title=inst.name, show_header=False, title_justify="left", box=None, padding=(0, 1))
        detail.add_column("key", style="bold", no_wrap=True)
        detail.add_column("value", overflow="fold")
        detail.add_row("tenant", inst.tenant + (" (shared with every tenant)" if inst.shared else ""))
        detail.add_row("model", f"{inst.served_model_name} ({inst.task})")
        if inst.model_key in result.model_numbers:
            detail.add_row("sized from", result.model_numbers[inst.model_key])
        detail.add_row("runtime", f"{inst.runtime} - {inst.runtime_reason}")
        detail.add_row("image", inst.image)
        detail.add_row("device", inst.device)
        detail.add_row("address", f"{inst.bind}:{inst.host_port}")
        detail.add_row("command", command_line(inst))
        detail.add_row("limits", f"memory {_bytes(inst.memory_bytes)}, swap {_bytes(inst.memory_swap_bytes)}, "
                                 f"cpus {'-' if inst.cpus is None else f'{inst.cpus:g}'}")
        measured = result.measured_vram.get(inst.name)
        if inst.vram and measured:
            v = inst.vram
            detail.add_row("VRAM", f"{measured.total_mib:,} MiB measured by tune"
                                   + (f" ({measured.measured_at})" if measured.measured_at else "")
                                   + f" at max_batch_tokens {v.max_batch_tokens} ({v.dtype}); the estimate is "
                                   f"{measured.estimated_mib:,} MiB")
        elif inst.vram:
            v = inst.vram
            detail.add_row("VRAM", f"{v.total_mib:,} MiB estimated = weights {v.weights_mib:,} + activations "
                                   f"{v.activations_mib:,} (max_batch_tokens {v.max_batch_tokens}) + context "
                                   f"{v.context_mib:,} ({v.dtype}); not measured (tei-manager tune measures it)")
        else:
            detail.add_row("VRAM", "none (CPU)")
        console.print(detail)
    if result.gpus:
        gpus = Table(title="GPU budget (MiB)")
        gpus.add_column("GPU", no_wrap=True)
        gpus.add_column("name", overflow="fold")
        for column in ("total", "headroom", "others", "budget", "planned", "free"):
            gpus.add_column(column, justify="right", no_wrap=True)
        gpus.add_column("instances", overflow="fold")
        for g in result.gpus:
            gpus.add_row(str(g.index), g.name, f"{g.total_mib:,}", f"{g.headroom_mib:,}", f"{g.in_use_mib:,}",
                         f"{g.budget_mib:,}", f"{g.planned_mib:,}", f"{g.free_after_plan_mib:,}",
                         ", ".join(g.instances) or "-")
        if len(result.gpus) > 1:
            gpus.add_row("all", "", f"{sum(g.total_mib for g in result.gpus):,}", "", "",
                         f"{sum(g.budget_mib for g in result.gpus):,}", f"{sum(g.planned_mib for g in result.gpus):,}",
                         f"{sum(g.free_after_plan_mib for g in result.gpus):,}", "", style="bold")
        console.print(gpus)
        console.print("others = memory held by processes that are not this profile's; "
                      "budget = total - headroom - others"
                      + ("; m = measured by tune, else estimated" if result.measured_vram else ""), style="dim")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print("Nothing was changed.", style="dim")


# --- profile validate / schema ----------------------------------------------------------------------------


def validate_command(
    files: list[Path] = typer.Argument(..., help="Profile YAML files."),
    skip_secrets: bool = typer.Option(False, "--skip-secrets", help="Do not read the tenants' API keys."),
    strict: bool = typer.Option(False, "--strict",
                                help="Treat unset API-key env vars and missing key files as errors."),
) -> None:
    """Check profiles: schema, references, model paths, known models and (unless --skip-secrets) API keys.

    An API key that is not set (env var unset or empty, key file missing) is a warning: a fresh
    clone has none.  --strict makes it an error (for the host the gateway runs on)."""
    failed = 0
    for path in files:
        warnings: list[ProfileIssue] = []
        problems = validate_file(path, secrets=not skip_secrets, strict=strict, warnings=warnings)
        for issue in warnings:
            err_console.print(f"[yellow]warning:[/] {issue.render()}", highlight=False, soft_wrap=True)
        if isinstance(problems, str):
            console.print(f"[green]OK[/]      {path}  {problems}", highlight=False, soft_wrap=True)
            continue
        failed += 1
        err_console.print(f"[bold red]INVALID[/] {problems.render()}", highlight=False, soft_wrap=True)
    if failed:
        raise ProfileError(f"{failed} of {len(files)} profile{'s' if len(files) > 1 else ''} invalid",
                           where="profile validate",
                           fix="fix the lines listed above" + ("" if skip_secrets else
                                                              " (--skip-secrets checks all but the API keys)"))


def validate_file(path: Path, *, secrets: bool = True, strict: bool = True,
                  warnings: list[ProfileIssue] | None = None) -> str | ProfileError:
    """A one-line summary when `path` is valid, else the ProfileError with every issue.

    Unless `strict`, unset secrets go to `warnings` instead of failing the profile."""
    from tei_manager.profiles import load_profile_with_source, resolve_secrets

    try:
        profile, source = load_profile_with_source(path)
    except ProfileError as exc:
        return exc
    issues: list[ProfileIssue] = []
    for key, spec in profile.models.items():
        try:
            model_info(spec)
        except UnknownModel as exc:
            # A local directory is sized from its files; a hub model by `plan`, which reads them.
            if spec.path is None:
                continue
            try:
                size_from_files(spec.id, LocalModelFiles(Path(spec.path)))
            except TeiManagerError as unreadable:
                issues.append(source.issue(("models", key), f"the planner does not know {spec.id!r} and cannot "
                                           f"read its files: {unreadable.what}",
                                           f"add {', '.join(exc.missing)} from the model's config.json"))
    keys = 0
    if secrets:
        try:
            keys = sum(len(v) for v in resolve_secrets(profile, source=source).values())
        except ProfileError as exc:
            unset = [i for i in exc.issues if i.unset_secret and not strict]
            issues += [i for i in exc.issues if i not in unset]
            if warnings is not None:
                warnings += unset
            keys = -len(unset)  # counted below as "not set"
    if issues:
        return ProfileError(f"{len(issues)} problem{'s' if len(issues) > 1 else ''} in the profile",
                            where=str(path), issues=issues)
    parts = [_count(len(profile.models), "model"), _count(len(profile.tenants), "tenant"),
             _count(len(profile.deployments), "deployment")]
    if secrets and keys >= 0:
        parts.append(_count(keys, "API key") + " read")
    elif secrets:
        parts.append(_count(-keys, "API key") + " not set")
    return f"({', '.join(parts)})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def schema_command(
    as_json: bool = typer.Option(False, "--json", help="Print the JSON schema instead of the field table."),
) -> None:
    """Show every profile field with its type, default and meaning."""
    from tei_manager.core.models import Profile

    if as_json:
        typer.echo(json.dumps(Profile.model_json_schema(), indent=2))
        return
    for title, rows in schema_rows():
        table = Table(title=title, title_justify="left")
        for column in ("field", "type", "default", "description"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def schema_rows() -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """(model name, [(field, type, default, description)]) for every model of the profile schema."""
    from pydantic_core import PydanticUndefined

    from tei_manager.core import models as m

    out: list[tuple[str, list[tuple[str, str, str, str]]]] = []
    for cls in (m.Profile, m.ModelSpec, m.Tenant, m.SecretRef, m.Quota, m.Deployment, m.GpuPlacement,
                m.Tuning, m.Limits, m.FingerprintLimits, m.TeiImage, m.GatewaySettings, m.HubSettings, m.Autoscaling,
                m.KubernetesSettings, m.KubernetesGpu, m.ModelCache):
        rows = []
        for name, info in cls.model_fields.items():
            if info.is_required():
                default = "required"
            elif info.default_factory is not None:
                default = _show(info.default_factory())  # type: ignore[call-arg]
            else:
                default = "" if info.default is PydanticUndefined else _show(info.default)
            rows.append((name, _type_name(info.annotation), default, info.description or ""))
        out.append((cls.__name__, rows))
    return out


def _show(value: Any) -> str:
    if hasattr(value, "model_dump"):
        return "{...}" if value.model_dump(exclude_defaults=True) else "defaults"
    return json.dumps(value) if not isinstance(value, str) else value


def _type_name(tp: Any) -> str:
    """Readable type names for the field table: `int | 'auto'`, `size (6g, 512m)`, `list[Deployment]`."""
    import types
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return "size (6g, 512m)" if args[0] is int else _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))
