"""`models export` / `models import`: a profile's models as one archive, for an air-gapped host.

The archive is a plain tar (weights do not compress):

    manifest.json                       format, profile, and per model: hub id, revision, commit and
                                        the sha256 of every file of its snapshot
    cache/models--org--name/...         the cache layout itself: refs/<revision>, the snapshot's
                                        links and the blobs they point to (nothing else)

Import extracts with tarfile's `data` filter (no absolute paths, no links out of the archive),
verifies every file against the manifest, and only then moves the models into the cache, so a
damaged archive leaves the cache as it was.  Models with a local `path` are not exported: they are
already files the operator copies.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tei_manager.core.models import Profile
from tei_manager.models.source import DEFAULT_REVISION, cached_snapshot, repo_folder
from tei_manager.models.store import ModelStoreError, file_digest, hub_models, target

FORMAT = 1
MANIFEST = "manifest.json"
CACHE_PREFIX = "cache"


@dataclass(frozen=True)
class ArchivedModel:
    hub_id: str
    revision: str
    commit: str
    files: dict[str, str] = field(default_factory=dict)  # snapshot path -> sha256


@dataclass(frozen=True)
class Manifest:
    profile: str
    models: tuple[ArchivedModel, ...]
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "profile": self.profile,
                           "models": [asdict(m) for m in self.models]}, indent=2)

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Manifest:
        try:
            data: dict[str, Any] = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ModelStoreError(f"archive format {data.get('format')!r}, this tei-manager reads {FORMAT}",
                                      where=where, fix="export it again with this version of tei-manager")
            models = tuple(ArchivedModel(hub_id=str(m["hub_id"]), revision=str(m["revision"]),
                                         commit=str(m["commit"]), files={str(k): str(v) for k, v in
                                                                         m["files"].items()})
                           for m in data["models"])
            return cls(profile=str(data["profile"]), models=models)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelStoreError("the archive's manifest.json is not valid", where=where,
                                  fix="use an archive written by `tei-manager models export`") from None


def export_models(profile: Profile, output: Path) -> Manifest:
    """Write the profile's pulled hub models to `output`; raises when one is not in the cache."""
    cache = target(profile)
    archived: list[ArchivedModel] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output, "w") as tar:
        for key, spec in hub_models(profile).items():
            snapshot = cached_snapshot(cache, spec.id, spec.revision)
            if snapshot is None:
                raise ModelStoreError(f"{spec.id} is not in the cache {cache}", where=f"models.{key}",
                                      fix="run `tei-manager models pull` for the profile first")
            repo = cache / repo_folder(spec.id)
            base = f"{CACHE_PREFIX}/{repo.name}"
            revision = spec.revision or DEFAULT_REVISION
            files: dict[str, str] = {}
            ref = repo / "refs" / revision
            if ref.is_file():
                tar.add(ref, f"{base}/refs/{revision}")
            for link in sorted(p for p in snapshot.rglob("*") if p.is_file()):
                name = str(link.relative_to(snapshot))
                blob = link.resolve()
                files[name] = file_digest(blob, "sha256")
                if blob.parent == repo / "blobs":
                    tar.add(blob, f"{base}/blobs/{blob.name}")
                tar.add(link, f"{base}/snapshots/{snapshot.name}/{name}", recursive=False)
            archived.append(ArchivedModel(hub_id=spec.id, revision=revision, commit=snapshot.name, files=files))
        manifest = Manifest(profile=profile.name, models=tuple(archived))
        raw = manifest.to_json().encode()
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(raw)
            handle.flush()
            tar.add(handle.name, MANIFEST)
    return manifest


def import_models(archive: Path, cache: Path) -> Manifest:
    """Verify and unpack an exported archive into `cache` (see the module docstring)."""
    where = str(archive)
    if not archive.is_file():
        raise ModelStoreError("no such archive", where=where, fix="give the file `models export` wrote")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".import-") as tmp:
        staging = Path(tmp)
        try:
            with tarfile.open(archive, "r") as tar:
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ModelStoreError(f"cannot unpack the archive: {exc}", where=where,
                                  fix="copy the archive again; it may be truncated") from None
        manifest_file = staging / MANIFEST
        if not manifest_file.is_file():
            raise ModelStoreError("the archive has no manifest.json", where=where,
                                  fix="use an archive written by `tei-manager models export`")
        manifest = Manifest.parse(manifest_file.read_bytes(), where)
        for model in manifest.models:
            snapshot = staging / CACHE_PREFIX / repo_folder(model.hub_id) / "snapshots" / model.commit
            for name, sha in model.files.items():
                path = snapshot / name
                if not path.is_file() or file_digest(path.resolve(), "sha256") != sha:
                    raise ModelStoreError(f"{model.hub_id}: {name} is missing or does not match its sha256",
                                          where=where, fix="copy the archive again, or export it anew")
        for model in manifest.models:
            _merge(staging / CACHE_PREFIX / repo_folder(model.hub_id), cache / repo_folder(model.hub_id))
    return manifest


def _merge(source: Path, dest: Path) -> None:
    """Move a verified repository into the cache, keeping what the cache already has."""
    for path in sorted(source.rglob("*"), key=lambda p: (p.is_symlink(), str(p))):
        if path.is_dir() and not path.is_symlink():
            continue
        goal = dest / path.relative_to(source)
        goal.parent.mkdir(parents=True, exist_ok=True)
        if goal.is_symlink() or goal.exists():
            if path.parent.name != "refs":
                continue
            goal.unlink()
        if path.is_symlink():
            goal.symlink_to(path.readlink())
        else:
            shutil.move(str(path), str(goal))
