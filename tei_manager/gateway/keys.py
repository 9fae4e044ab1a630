"""API key -> tenant, without keeping keys around.

Only SHA-256 digests are stored.  A presented key is hashed and compared against *every*
stored digest with `hmac.compare_digest`, without stopping at the first match, so the time
taken does not tell an attacker how close a guess was or where a key sits in the table.
Keys are never logged or put into error messages.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    def __init__(self, keys: Mapping[str, Iterable[str]]) -> None:
        """`keys` maps a tenant to its plain keys; they are hashed here and dropped."""
        self._entries: list[tuple[bytes, str]] = []
        owners: dict[bytes, str] = {}
        for tenant, tenant_keys in keys.items():
            for key in tenant_keys:
                if not key:
                    continue
                digest = _digest(key)
                if owners.get(digest, tenant) != tenant:
                    # One key for two tenants would make isolation depend on table order.
                    raise ValueError(f"tenants '{owners[digest]}' and '{tenant}' share an API key")
                owners[digest] = tenant
                self._entries.append((digest, tenant))

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_for(self, presented: str) -> str | None:
        digest = _digest(presented)
        found: str | None = None
        for stored, tenant in self._entries:
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
