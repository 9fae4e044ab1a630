"""ModelScope (modelscope.cn), for models published there (`source: modelscope`).

Implemented against ModelScope's documented HTTP file API, which its own client uses:

    GET {endpoint}/api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path}   a file (Range honoured)
    GET {endpoint}/api/v1/models/{owner}/{name}/repo/files?Revision={rev}&Recursive=true   the file list

No ModelScope endpoint is reachable from the test machines and its client cannot be pointed at a
loopback stand-in here; tests/fixtures/hub_standin.py answers the documented API, so this path is
tested against that reading of the documentation, not against the real service (docs/models.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from tei_manager.core.models import ModelSpec, Profile
from tei_manager.models.sizing import HubModelFiles

if TYPE_CHECKING:
    from tei_manager.models.store import ProgressSink, Pulled

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


def pull_modelscope(profile: Profile, key: str, spec: ModelSpec, cache: Path, *,
                    on_progress: ProgressSink | None, max_workers: int) -> Pulled:
    """Download a ModelScope repository into the hub cache layout (blobs by sha256, a snapshot of
    links, refs/<revision>), so that instances find it exactly as a model pulled from the hub.

    Resumes from `blobs/<sha256>.incomplete` with a Range request; verifies each file's sha256
    against ModelScope's listing.  Not tested against the real service (see the module docstring).
    """
    from tei_manager.models.source import DEFAULT_REVISION, repo_folder, resolve_token
    from tei_manager.models.store import FileProgress, ModelStoreError, Pulled, fetch, file_digest, link_snapshot

    endpoint = profile.hub.modelscope_endpoint
    revision = spec.revision or DEFAULT_MODELSCOPE_REVISION
    where = f"models.{key} ({spec.id}@{revision} on {endpoint})"
    token = resolve_token(profile.hub.token)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(timeout=60.0, follow_redirects=True)
    try:
        files = list_files(endpoint, spec.id, revision, token=token, client=client)
    except (httpx.HTTPError, ValueError) as exc:
        raise ModelStoreError(f"cannot list the model's files on ModelScope: {exc}", where=where,
                              fix="check the model id, revision and hub.modelscope_endpoint") from None
    # ModelScope has no commit sha in its file API: the snapshot is named after the revision.
    repo = cache / repo_folder(spec.id)
    sink = on_progress or (lambda _: None)

    def one(entry: dict[str, Any]) -> int:
        name, sha, size = str(entry["Path"]), str(entry.get("Sha256") or ""), int(entry.get("Size") or 0)
        blob = repo / "blobs" / (sha or f"{revision}-{name.replace('/', '--')}")
        fetched = 0
        if not blob.is_file():
            fetch(client, file_url(endpoint, spec.id, revision, name), blob, headers=headers, size=size or None,
                  where=where, report=lambda done: sink(FileProgress(model=key, file=name, done=done,
                                                                     total=size or None)))
            if sha and file_digest(blob, "sha256") != sha:
                blob.unlink()
                raise ModelStoreError(f"{name}: sha256 does not match ModelScope's {sha}; the file was deleted",
                                      where=where, fix="pull again")
            fetched = 1
        link_snapshot(repo, revision, name, blob)
        sink(FileProgress(model=key, file=name, done=blob.stat().st_size, total=blob.stat().st_size))
        return fetched

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        fetched = sum(pool.map(one, files))
    # The runtimes look the model up as the hub client does: refs/<revision as pinned, else main>.
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / (spec.revision or DEFAULT_REVISION)).write_text(revision)
    return Pulled(key=key, hub_id=spec.id, revision=revision, source=f"modelscope {endpoint}",
                  path=repo / "snapshots" / revision, files=len(files),
                  size=sum(int(f.get("Size") or 0) for f in files), fetched=fetched)
