"""Labels and names shared by the backends: how an instance is recognised on the engine.

Docker containers carry these as labels; the process backend writes the same keys into its
state files, so `status` and `diff` read one vocabulary whatever the engine.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tei_manager.core.plan import InstancePlan

PREFIX = "tei-manager"
MANAGED = f"{PREFIX}.managed"
PROFILE = f"{PREFIX}.profile"
INSTANCE = f"{PREFIX}.instance"
TENANT = f"{PREFIX}.tenant"
MODEL = f"{PREFIX}.model"
DEPLOYMENT = f"{PREFIX}.deployment"
RUNTIME = f"{PREFIX}.runtime"
DEVICE = f"{PREFIX}.device"
BIND = f"{PREFIX}.bind"
PORT = f"{PREFIX}.port"
SPEC_HASH = f"{PREFIX}.spec-hash"
PLAN = f"{PREFIX}.plan"
# Marks the shared Hugging Face cache volume: `down` never removes it.
HF_CACHE = f"{PREFIX}.hf-cache"

# Environment variables and flags whose values are credentials: never written into labels.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)
_SECRET_FLAGS = {"--api-key", "--hf-token", "--hf-api-token"}
REDACTED = "***"


def base_name(profile: str, instance: str) -> str:
    """Container name of the live instance; temporary copies add `.<slot>`."""
    return f"tei-{profile}-{instance}"


def slot_name(profile: str, instance: str, slot: str) -> str:
    return base_name(profile, instance) + (f".{slot}" if slot else "")


def redacted_plan(inst: InstancePlan) -> dict[str, Any]:
    """The plan as JSON with credential values blanked (env vars and `--api-key`-style flags)."""
    data = inst.model_dump(mode="json")
    data["env"] = {k: (REDACTED if _SECRET_NAME.search(k) else v) for k, v in data["env"].items()}
    args = list(data["settings"]["extra_args"])
    for i, arg in enumerate(args):
        flag, eq, _ = arg.partition("=")
        if flag in _SECRET_FLAGS:
            if eq:
                args[i] = f"{flag}={REDACTED}"
            elif i + 1 < len(args):
                args[i + 1] = REDACTED
    data["settings"]["extra_args"] = args
    return data


def instance_labels(inst: InstancePlan) -> dict[str, str]:
    """Everything `status`, `diff` and `down` need to know, carried by the instance itself."""
    return {
        MANAGED: "true",
        PROFILE: inst.profile,
        INSTANCE: inst.name,
        TENANT: inst.tenant,
        MODEL: inst.model.hub_id,
        DEPLOYMENT: inst.deployment,
        RUNTIME: inst.runtime,
        DEVICE: inst.device,
        BIND: inst.bind,
        PORT: str(inst.host_port),
        SPEC_HASH: inst.spec_hash,
        PLAN: json.dumps(redacted_plan(inst), sort_keys=True, separators=(",", ":")),
    }


def plan_from_labels(labels: dict[str, str]) -> InstancePlan | None:
    """The InstancePlan stored in the labels (credentials blanked), or None if unreadable."""
    raw = labels.get(PLAN)
    if not raw:
        return None
    try:
        return InstancePlan.model_validate_json(raw)
    except ValueError:
        return None
