"""`tei-manager export kubernetes PROFILE -o DIR`: a kustomize-ready directory from the profile's Plan.

Rendering lives in tei_manager.export (the Kubernetes backend applies the same objects); this
command only chooses the inputs and writes the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tei_manager.cli.output import console, err_console
from tei_manager.errors import PlanError

GPUS_HELP = ('The cluster\'s GPU types instead of the profile\'s `kubernetes.gpus`: '
             '"index:name:memory:compute_capability,...", e.g. "0:NVIDIA L20:46068MiB:8.9".')


def register(app: typer.Typer) -> None:
    export = typer.Typer(help="Render a profile for another platform.", no_args_is_help=True)
    app.add_typer(export, name="export")

    @export.command("kubernetes")
    def kubernetes(
        profile: Annotated[Path, typer.Argument(help="Profile YAML file.")],
        out: Annotated[Path, typer.Option("--output", "-o", help="Directory to write (created; kustomize-ready).")],
        gpus: Annotated[str | None, typer.Option("--gpus", help=GPUS_HELP)] = None,
        alerts: Annotated[Path | None, typer.Option(
            "--alerts", help="Prometheus rules file for the PrometheusRule (default: deploy/prometheus/alerts.yml).",
        )] = None,
        no_alerts: Annotated[bool, typer.Option("--no-alerts", help="Render no PrometheusRule.")] = False,
    ) -> None:
        """Deployments, Services, PDBs, gateway, NetworkPolicy, monitoring and autoscaling for a cluster."""
        from tei_manager.core.facts import parse_gpu_specs
        from tei_manager.export.writer import alert_groups, build, write_directory
        from tei_manager.services import load

        load(profile)  # a missing file is a clear error before anything else
        try:
            gpu_facts = parse_gpu_specs(gpus) if gpus else None
        except ValueError as exc:
            raise PlanError(str(exc), where="--gpus", fix=GPUS_HELP) from None
        groups = [] if no_alerts else alert_groups(alerts)
        cluster, manifests = build(profile, gpus=gpu_facts, alerts=groups)
        for warning in cluster.plan.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        written = write_directory(manifests, out)
        console.print(f"[green]wrote[/] {len(written)} files to {out} (namespace {cluster.namespace}); "
                      f"apply with `kubectl apply -k {out}`", soft_wrap=True, highlight=False)
        if cluster.time_slicing_replicas:
            console.print(f"GPU sharing: time-slicing; the NVIDIA device plugin must advertise at least "
                          f"{cluster.time_slicing_replicas} replicas per GPU", soft_wrap=True, highlight=False)
