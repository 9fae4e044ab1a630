"""Where a profile's models live, and sizing them from their files for the planner.

A model is read, in this order, from:

1. its `path` (a local directory);
2. the shared cache the instances mount (`hf_cache` as a host directory, or `hub.download_dir`), when
   `models pull` already put it there: sizing then needs no network;
3. the profile's hub endpoint (huggingface.co or a mirror) or ModelScope, by ranged reads.

A hub model that the catalog and the profile already describe completely is not fetched, so `plan`
works offline for them; any other model is sized from its files (the profile's numbers still win).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tei_manager.core.catalog import KNOWN_MODELS, ModelInfo
from tei_manager.core.models import ModelSpec, Profile, SecretRef
from tei_manager.errors import PlanError, ProfileError, TeiManagerError
from tei_manager.models.sizing import HubModelFiles, LocalModelFiles, ModelFiles, size_from_files

DEFAULT_REVISION = "main"


def resolve_token(ref: SecretRef | None) -> str | None:
    """The hub token a profile refers to (`{env: HF_TOKEN}` or `{file: ...}`); None when unset."""
    if ref is None:
        return None
    if ref.env:
        return os.environ.get(ref.env) or None
    assert ref.file is not None
    try:
        return Path(ref.file).expanduser().read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ProfileError(f"cannot read the hub token file: {exc.strerror or exc}", where="hub.token",
                           fix="create the file or drop `hub.token` for public models") from None


def store_dir(profile: Profile) -> Path | None:
    """The directory `models pull` fills: `hf_cache` when it is a host directory (the instances mount
    it), else `hub.download_dir`; None when the profile has neither."""
    if profile.hf_cache.startswith("/"):
        return Path(profile.hf_cache)
    return Path(profile.hub.download_dir) if profile.hub.download_dir else None


def repo_folder(hub_id: str) -> str:
    """The cache's directory name for a repository (huggingface_hub's layout: models--org--name)."""
    return "models--" + hub_id.replace("/", "--")


def cached_snapshot(cache: Path, hub_id: str, revision: str | None) -> Path | None:
    """The snapshot directory of `hub_id` at `revision` in a huggingface_hub cache, if it is there."""
    repo = cache / repo_folder(hub_id)
    wanted = revision or DEFAULT_REVISION
    commit = wanted
    if not re.fullmatch(r"[0-9a-f]{40}", wanted):
        ref = repo / "refs" / wanted
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


@dataclass(frozen=True)
class Located:
    """Where a model's files can be read, and how to say so."""

    files: ModelFiles
    where: str


def locate(key: str, spec: ModelSpec, profile: Profile, *, network: bool) -> Located | None:
    """The best place to read `spec`'s files (see the module docstring); None when there is none
    without the network and `network` is false."""
    if spec.path:
        return Located(LocalModelFiles(Path(spec.path)), f"files in {spec.path}")
    cache = store_dir(profile)
    snapshot = cached_snapshot(cache, spec.id, spec.revision) if cache else None
    if snapshot is not None:
        return Located(LocalModelFiles(snapshot), f"files in the model cache {cache}")
    if not network:
        return None
    if spec.source == "modelscope":
        from tei_manager.models.modelscope import ModelScopeFiles

        files: ModelFiles = ModelScopeFiles(profile.hub.modelscope_endpoint, spec.id, revision=spec.revision,
                                            token=resolve_token(profile.hub.token))
        return Located(files, f"files on {profile.hub.modelscope_endpoint}")
    files = HubModelFiles(profile.hub.endpoint, spec.id, revision=spec.revision,
                          token=resolve_token(profile.hub.token))
    return Located(files, f"files on {profile.hub.endpoint}")


def described(spec: ModelSpec) -> bool:
    """The profile and the catalog together give every number the planner needs."""
    known = KNOWN_MODELS.get(spec.id)
    return all(mine is not None or known is not None
               for mine in (spec.params_millions, spec.hidden_size, spec.num_layers, spec.max_input_length))


@dataclass(frozen=True)
class Sized:
    """What `size_models` found: numbers per model key, where they were read, and what could not be."""

    infos: Mapping[str, ModelInfo]
    where: Mapping[str, str]
    problems: Mapping[str, TeiManagerError]


def size_models(profile: Profile) -> Sized:
    """Size every deployed model from its files where that is worth it (see the module docstring).

    Never raises for a model the catalog and profile describe: reading its files is then a bonus,
    and a failure is only reported in `problems` (the planner uses the known numbers)."""
    infos: dict[str, ModelInfo] = {}
    where: dict[str, str] = {}
    problems: dict[str, TeiManagerError] = {}
    used = {d.model for d in profile.deployments}
    for key, spec in profile.models.items():
        if key not in used:
            continue
        located = locate(key, spec, profile, network=not described(spec))
        if located is None:
            continue
        try:
            infos[key] = size_from_files(spec.id, located.files)
        except TeiManagerError as exc:
            problems[key] = exc
            continue
        where[key] = located.where
    return Sized(infos=infos, where=where, problems=problems)


def sizing_failure(key: str, spec: ModelSpec, exc: TeiManagerError) -> PlanError:
    """The planner's refusal for a model it cannot size, with why its files did not help."""
    return PlanError(
        f"the planner does not know {spec.id!r}, the profile leaves out its numbers and its files cannot be "
        f"read: {exc.what}" + (f" ({exc.where})" if exc.where else ""),
        where=f"models.{key}",
        fix=exc.fix or "give params_millions, hidden_size, num_layers and max_input_length on the model, "
        "a `path`, or a reachable `hub.endpoint`",
    )
