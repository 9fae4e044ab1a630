"""Validate response bodies against TEI's OpenAPI schemas (a copy of TEI 1.9.3's docs/openapi.json).

The file is OpenAPI 3.0, whose `nullable: true` JSON Schema does not know; we rewrite it into
`type: [T, "null"]` before validating.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

SPEC_PATH = Path(__file__).with_name("tei-openapi.json")


def _jsonschema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _jsonschema(v) for k, v in node.items() if k not in ("nullable", "example", "default")}
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        if node.get("nullable") and "allOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [_jsonschema(x) for x in node]
    return node


@lru_cache(maxsize=1)
def _components() -> dict[str, Any]:
    spec = json.loads(SPEC_PATH.read_text())
    return {"components": _jsonschema(spec["components"])}


def validate(body: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError unless ``body`` matches components/schemas/<schema_name>."""
    schema = dict(_components())
    schema["$ref"] = f"#/components/schemas/{schema_name}"
    jsonschema.validate(body, schema)
