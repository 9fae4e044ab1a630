"""Per-instance internal keys: only the gateway and the manager's own probes may call an instance.

Instances listen on loopback ports that any local process can reach, which would let it skip
tenant keys, priorities and quotas. So every instance is started with an API key of its own
(TEI's `API_KEY`, which the fallback worker honours too), and the gateway presents it.

The keys are derived, never stored: HMAC-SHA256 of the instance's identity under one random
secret per state directory (`instance-keys.secret`, mode 0600, made on first use, like an SSH host
key). So no key appears in a plan, a label, a state record or a log line, and the manager, the
supervisor and the gateway, which share the state directory, all derive the same key on their own.
To rotate every key, delete the secret and apply again: the plan names the secret by a digest
(`InstancePlan.internal_key_id`), so a new secret changes every protected instance's spec hash
and `apply` replaces them, health-gated as usual.

The key reaches an instance as `API_KEY` in its environment, TEI's own way: readable only by the
instance's user and root (a process backend), or by whoever may inspect containers (Docker, whose
users can exec into the container anyway). Never on a command line, which every user can read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.state import state_root

SECRET_FILE = "instance-keys.secret"
SECRET_BYTES = 32


def _secret(root: Path | None = None) -> bytes:
    """The state directory's secret, created atomically (0600) by whoever needs it first."""
    directory = root if root is not None else state_root()
    path = directory / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = secrets.token_hex(SECRET_BYTES)
    tmp = directory / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(fresh + "\n")
    try:
        os.link(tmp, path)  # fails if another process made it first: then theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def instance_key(profile: str, instance: str, *, root: Path | None = None) -> str:
    """The key an instance is started with and the gateway presents: 64 hex characters."""
    message = f"tei-manager/instance/{profile}/{instance}".encode()
    return hmac.new(_secret(root), message, hashlib.sha256).hexdigest()


def bearer(profile: str, instance: str, *, root: Path | None = None) -> dict[str, str]:
    """The Authorization header that opens an instance."""
    return {"authorization": f"Bearer {instance_key(profile, instance, root=root)}"}


def instance_env(instance: InstancePlan) -> dict[str, str]:
    """What a backend adds to an instance's environment: its key, when the profile protects instances."""
    if not instance.internal_auth:
        return {}
    return {"API_KEY": instance_key(instance.profile, instance.name)}


def instance_headers(instance: InstancePlan) -> dict[str, str]:
    """The headers that open `instance` (none when it is not protected)."""
    return bearer(instance.profile, instance.name) if instance.internal_auth else {}


def secret_id(*, root: Path | None = None) -> str:
    """A short digest that names the current secret (safe to show: it reveals nothing of it)."""
    return hashlib.sha256(b"tei-manager/secret-id/" + _secret(root)).hexdigest()[:12]


def with_key_ids(plan: Plan, *, root: Path | None = None) -> Plan:
    """`plan` with each protected instance tied to the current secret (see `internal_key_id`)."""
    if not any(i.internal_auth for i in plan.instances):
        return plan
    key_id = secret_id(root=root)
    instances = tuple(i.model_copy(update={"internal_key_id": key_id}) if i.internal_auth else i
                      for i in plan.instances)
    return plan.model_copy(update={"instances": instances})
