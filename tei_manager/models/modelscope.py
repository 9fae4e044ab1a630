"""ModelScope (modelscope.cn), for models published there (`source: modelscope`).

Implemented against ModelScope's documented HTTP file API, which its own client uses:

    GET {endpoint}/api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path}   a file (Range honoured)
    GET {endpoint}/api/v1/models/{owner}/{name}/repo/files?Revision={rev}&Recursive=true   the file list

No ModelScope endpoint is reachable from the test machines and its client cannot be pointed at a
loopback stand-in here, so this path is untested against the real service (docs/models.md says so).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from tei_manager.models.sizing import HubModelFiles

DEFAULT_MODELSCOPE_REVISION = "master"


def file_url(endpoint: str, repo_id: str, revision: str, name: str) -> str:
    return (f"{endpoint.rstrip('/')}/api/v1/models/{repo_id}/repo?Revision={quote(revision)}"
            f"&FilePath={quote(name)}")


def list_files(endpoint: str, repo_id: str, revision: str, *, token: str | None = None,
               client: httpx.Client | None = None) -> list[dict[str, Any]]:
    """Every file of the repository: dicts with `Path`, `Size`, `Sha256` (ModelScope's field names)."""
    http = client or httpx.Client(timeout=30.0, follow_redirects=True)
    url = f"{endpoint.rstrip('/')}/api/v1/models/{repo_id}/repo/files"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = http.get(url, params={"Revision": revision, "Recursive": "true"}, headers=headers)
    response.raise_for_status()
    files = (response.json().get("Data") or {}).get("Files") or []
    return [f for f in files if f.get("Type") != "tree"]


class ModelScopeFiles(HubModelFiles):
    """A ModelScope repository, read with ranged GETs (sizing reads only headers)."""

    def __init__(self, endpoint: str, repo_id: str, *, revision: str | None = None, token: str | None = None,
                 client: httpx.Client | None = None) -> None:
        super().__init__(endpoint, repo_id, revision=revision or DEFAULT_MODELSCOPE_REVISION, token=token,
                         client=client)

    def url(self, name: str) -> str:
        return file_url(self.endpoint, self.repo_id, self.revision, name)
