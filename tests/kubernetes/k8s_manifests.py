"""Shared helpers for the Kubernetes tests: render a profile, validate objects against schemas."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tei_manager.export.kubernetes import Manifest
from tei_manager.export.writer import build

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "profiles").glob("*.yaml"))
CRDS = ROOT / "tests" / "fixtures" / "crds"
#: The oldest and newest Kubernetes versions the export supports (kubernetes-validate's schemas).
K8S_VERSIONS = ("1.29.0", "1.37.0")
#: The profiles golden files show (seed 004 and seed 000).
SEED_PROFILES = ("l20-shared", "multi-tenant")


def rendered(profile: Path) -> list[Manifest]:
    return build(profile)[1]


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the openAPIV3Schema of every vendored CRD version."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in CRDS.glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def is_custom(manifest: Manifest) -> bool:
    return (manifest["apiVersion"], manifest["kind"]) in crd_schemas()


def validate_custom(manifest: Manifest) -> None:
    """jsonschema against the CRD's openAPIV3Schema, plus what the API server adds: no unknown fields."""
    schema = crd_schemas()[(manifest["apiVersion"], manifest["kind"])]
    # OpenAPI v3 schemas are close to draft 7; no check_schema: some CRD patterns are Go regexps
    # (`^(?i)...`) that Python's re refuses, and they only matter for fields present.
    jsonschema.Draft7Validator(_closed(schema)).validate(manifest)


def _closed(schema: Any) -> Any:
    """The API server prunes unknown fields of structural schemas; here they are errors instead."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema
