"""The shared model cache: pull a profile's models into it, list it, remove from it.

The cache is huggingface_hub's layout (`models--org--name/{blobs,snapshots,refs}`), which TEI
(hf-hub) and the fallback worker (transformers) read too, so an instance that mounts it finds a
pulled model without downloading anything.  It is the profile's `hf_cache` when that is a host
directory, else `hub.download_dir` (tei_manager.models.source.store_dir).

The repository's commit and file list come from the real `huggingface_hub` client (`HfApi`),
against the profile's `hub.endpoint` (the hub or a mirror); the files' bytes are fetched here:

* at the pinned revision (`revision`, default `main`), file by file, `hub.max_workers` at once;
* resumed after an interruption: a partial file stays as `blobs/<etag>.incomplete` and the next
  pull asks for the rest with a `Range` request (huggingface_hub 1.x discards partial files);
* verified: each downloaded file's sha256 (LFS files) or git blob sha1 (the others) must match what
  the hub lists for it, else the file is deleted and the pull fails.

Progress is reported as `FileProgress` events (the CLI draws rich bars from them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

import httpx

from tei_manager.core.models import ModelSpec, Profile
from tei_manager.errors import TeiManagerError
from tei_manager.models.source import DEFAULT_REVISION, cached_snapshot, repo_folder, resolve_token, store_dir

CHUNK = 1 << 20


class ModelStoreError(TeiManagerError):
    """A model could not be fetched, verified, listed or removed."""


@dataclass(frozen=True)
class FileProgress:
    """Bytes of one file so far; `total` None while unknown; `done == total` when finished."""

    model: str
    file: str
    done: int
    total: int | None


ProgressSink = Callable[[FileProgress], None]


@dataclass(frozen=True)
class Pulled:
    """One model after `pull`: where it is and what this pull fetched."""

    key: str
    hub_id: str
    revision: str
    source: str  # "hub <endpoint>", "local directory", ...
    path: Path
    files: int
    size: int
    fetched: int  # files downloaded by this pull (0: it was all there)


@dataclass(frozen=True)
class CachedModel:
    """One repository found in a cache directory (`models ls`)."""

    hub_id: str
    revisions: tuple[str, ...]  # commits with a snapshot
    refs: dict[str, str]  # branch or tag -> commit
    size: int
    incomplete: int  # partial downloads waiting to be resumed


def target(profile: Profile) -> Path:
    """The cache directory `pull` fills for `profile`, or a clear error when there is none."""
    where = store_dir(profile)
    if where is None:
        raise ModelStoreError(
            f"hf_cache is the Docker volume {profile.hf_cache!r}, which tei-manager cannot fill from outside",
            where="hf_cache",
            fix="make hf_cache an absolute host directory (instances mount it), or set hub.download_dir",
        )
    return where


def hub_models(profile: Profile) -> dict[str, ModelSpec]:
    """The models a pull fetches: deployed ones without a local `path`, by key."""
    used = {d.model for d in profile.deployments}
    return {k: s for k, s in profile.models.items() if k in used and s.path is None}


def missing(profile: Profile) -> list[str]:
    """Keys of deployed hub models with no complete snapshot in the cache (nothing when there is no
    host-directory cache: then the instances download for themselves)."""
    where = store_dir(profile)
    if where is None:
        return []
    return [k for k, s in hub_models(profile).items() if not complete(where, s)]


def complete(cache: Path, spec: ModelSpec) -> bool:
    """A snapshot at the spec's revision, with its config and weights, and no download left half done."""
    snapshot = cached_snapshot(cache, spec.id, spec.revision)
    if snapshot is None or not (snapshot / "config.json").exists():
        return False
    if any((cache / repo_folder(spec.id) / "blobs").glob("*.incomplete")):
        return False
    return any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))


# ---- pulling ----------------------------------------------------------------------------------------
def fetch(client: httpx.Client, url: str, blob: Path, *, headers: dict[str, str], size: int | None,
          report: Callable[[int], None], where: str) -> None:
    """Download `url` into `blob`, through `blob.incomplete`, resuming what an earlier run left there.

    huggingface_hub (1.x) writes each download to a fresh temporary file and drops it on failure, so
    an interrupted pull would start a 2 GB file over; this keeps the partial file and asks for the
    rest with a Range request."""
    partial = blob.with_name(blob.name + ".incomplete")
    blob.parent.mkdir(parents=True, exist_ok=True)
    start = partial.stat().st_size if partial.exists() else 0
    if size is not None and start > size:
        partial.unlink()
        start = 0
    ranged = {"range": f"bytes={start}-"} if start and start != size else {}
    if not (size is not None and start == size):
        try:
            with client.stream("GET", url, headers={**headers, **ranged}) as response:
                if response.status_code >= 400:
                    raise ModelStoreError(f"{blob.name}: the hub answered {response.status_code}", where=where,
                                          fix="check the model id, revision and hub.token")
                done = start if response.status_code == 206 else 0
                # Unbuffered, chunks as they arrive: what was received is on disk if the process dies.
                with partial.open("ab" if done else "wb", buffering=0) as out:
                    report(done)
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        done += len(chunk)
                        report(done)
        except httpx.HTTPError as exc:
            raise ModelStoreError(f"download failed: {exc}", where=where,
                                  fix="run the pull again: it resumes where it stopped") from None
    partial.rename(blob)


def link_snapshot(repo: Path, commit: str, name: str, blob: Path) -> Path:
    """`snapshots/<commit>/<name>` -> `../../blobs/<etag>`, as huggingface_hub lays a cache out."""
    link = repo / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(blob, link.parent))
    return link


def file_digest(path: Path, algorithm: str) -> str:
    """sha256 of the content, or (`git-sha1`) git's blob id: sha1 of "blob <size>\\0" + content."""
    digest = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(blob: Path, name: str, expected: str, algorithm: str) -> None:
    actual = file_digest(blob, algorithm)
    if actual != expected:
        blob.unlink(missing_ok=True)
        raise ModelStoreError(
            f"{name}: {algorithm} {actual} does not match the hub's {expected}; the file was deleted",
            where=str(blob.parent.parent),
            fix="pull again; if it repeats, the mirror serves a corrupt copy (try another hub.endpoint)",
        )


def pull(profile: Profile, *, keys: Iterable[str] | None = None, on_progress: ProgressSink | None = None,
         max_workers: int | None = None) -> list[Pulled]:
    """Fetch the profile's models (or `keys`) into its cache; returns what is where."""
    wanted = set(keys) if keys is not None else None
    out: list[Pulled] = []
    for key, spec in profile.models.items():
        if wanted is not None and key not in wanted:
            continue
        if key not in {d.model for d in profile.deployments} and wanted is None:
            continue
        if spec.path is not None:
            files = [p for p in Path(spec.path).rglob("*") if p.is_file()]
            out.append(Pulled(key=key, hub_id=spec.id, revision="-", source="local directory", path=Path(spec.path),
                              files=len(files), size=sum(p.stat().st_size for p in files), fetched=0))
            continue
        if spec.source == "modelscope":
            from tei_manager.models.modelscope import pull_modelscope

            out.append(pull_modelscope(profile, key, spec, target(profile), on_progress=on_progress,
                                       max_workers=max_workers or profile.hub.max_workers))
            continue
        out.append(_pull_hub(profile, key, spec, target(profile), on_progress=on_progress,
                             max_workers=max_workers or profile.hub.max_workers))
    return out


def _pull_hub(profile: Profile, key: str, spec: ModelSpec, cache: Path, *, on_progress: ProgressSink | None,
              max_workers: int) -> Pulled:
    from huggingface_hub import HfApi, RepoFile, constants, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils._headers import build_hf_headers

    endpoint = profile.hub.endpoint
    revision = spec.revision or DEFAULT_REVISION
    where = f"models.{key} ({spec.id}@{revision} on {endpoint})"
    if constants.HF_HUB_OFFLINE:
        raise ModelStoreError("HF_HUB_OFFLINE is set, so nothing can be downloaded", where=where,
                              fix="unset HF_HUB_OFFLINE, or bring the models with `models import`")
    token = resolve_token(profile.hub.token)
    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        commit = api.model_info(spec.id, revision=revision).sha or revision
        entries = [e for e in api.list_repo_tree(spec.id, revision=commit, recursive=True)
                   if isinstance(e, RepoFile)]
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelStoreError(f"the hub has no such model or revision ({type(exc).__name__})", where=where,
                              fix="check the model id and revision; a gated or private model needs hub.token") from None
    except (HfHubHTTPError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelStoreError(f"cannot list the model's files: {first_line}", where=where,
                              fix="check hub.endpoint and the network (a mirror: https://hf-mirror.com)") from None
    headers = build_hf_headers(token=token or False, library_name="tei-manager")
    sink = on_progress or (lambda _: None)
    repo = cache / repo_folder(spec.id)
    lock = Lock()
    fetched = 0

    def one(entry: RepoFile, client: httpx.Client) -> None:
        nonlocal fetched
        # The blob is named after the file's etag, as huggingface_hub does: the sha256 for LFS
        # files, the git blob sha1 for the others; the same value is the checksum to verify.
        expected, algorithm = (entry.lfs.sha256, "sha256") if entry.lfs else (entry.blob_id, "git-sha1")
        blob = repo / "blobs" / expected
        if not blob.is_file():
            url = hf_hub_url(spec.id, entry.path, revision=commit, endpoint=endpoint)
            fetch(client, url, blob, headers=headers, size=entry.size, where=where,
                  report=lambda done: sink(FileProgress(model=key, file=entry.path, done=done, total=entry.size)))
            _verify(blob, entry.path, expected, algorithm)
            with lock:
                fetched += 1
        link_snapshot(repo, commit, entry.path, blob)
        sink(FileProgress(model=key, file=entry.path, done=entry.size, total=entry.size))

    with httpx.Client(timeout=httpx.Timeout(60.0, connect=20.0), follow_redirects=True) as client, \
            ThreadPoolExecutor(max_workers=max_workers) as pool:
        for future in [pool.submit(one, e, client) for e in entries]:
            future.result()
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return Pulled(key=key, hub_id=spec.id, revision=revision, source=f"hub {endpoint}",
                  path=repo / "snapshots" / commit, files=len(entries), size=sum(e.size for e in entries),
                  fetched=fetched)


# ---- listing and removing ----------------------------------------------------------------------------
def list_cache(cache: Path) -> list[CachedModel]:
    """Every model repository in a cache directory."""
    out: list[CachedModel] = []
    if not cache.is_dir():
        return out
    for repo in sorted(cache.glob("models--*")):
        hub_id = repo.name[len("models--"):].replace("--", "/", 1)
        blobs = [b for b in (repo / "blobs").glob("*") if b.is_file()] if (repo / "blobs").is_dir() else []
        refs = {r.name: r.read_text().strip() for r in (repo / "refs").glob("*") if r.is_file()} \
            if (repo / "refs").is_dir() else {}
        revisions = tuple(sorted(s.name for s in (repo / "snapshots").glob("*"))) \
            if (repo / "snapshots").is_dir() else ()
        out.append(CachedModel(hub_id=hub_id, revisions=revisions, refs=refs,
                               size=sum(b.stat().st_size for b in blobs),
                               incomplete=sum(1 for b in blobs if b.name.endswith(".incomplete"))))
    return out


def remove(cache: Path, hub_id: str) -> int:
    """Delete a model (every revision) from the cache; returns the bytes freed."""
    repo = cache / repo_folder(hub_id)
    if not repo.is_dir():
        known = ", ".join(m.hub_id for m in list_cache(cache)) or "nothing"
        raise ModelStoreError(f"{hub_id!r} is not in the cache", where=str(cache),
                              fix=f"the cache holds {known}")
    freed = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(repo)
    return freed
