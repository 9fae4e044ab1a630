"""`tune --write`: put the chosen settings into the profile YAML, changing nothing else.

A round trip through ruamel.yaml keeps comments, key order, flow or block style and quoting; the
indentation is detected from the file. Only the tuned keys under the deployment's ``tuning:`` change
(``forward_workers``, which the profile has no key for, goes into ``tuning.extra_args`` as the
worker's ``--forward-workers`` flag), and one comment line above ``tuning:`` records the date, the
SLO and the measured figures. A comment left there by an earlier tune is replaced, not stacked.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from tei_manager.errors import ProfileError

#: The profile's `tuning:` keys tune may change.
TUNED_KEYS = ("max_batch_tokens", "max_batch_requests", "max_concurrent_requests", "max_client_batch_size", "dtype")
#: Settings with no `tuning:` key of their own, written as runtime flags in `tuning.extra_args`.
FLAG_KEYS = {"forward_workers": "--forward-workers"}
COMMENT_PREFIX = "tuned by tei-manager tune"


#: (mapping indent, dash offset) styles tried; the one that reproduces the file unchanged is used.
_STYLES = ((2, 2), (2, 0), (4, 2), (4, 0), (4, 4))


def _new_yaml(mapping: int, offset: int) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    yaml.brace_single_entry_mapping_in_flow_sequence = True  # keep `[{env: KEY}]` as written
    yaml.indent(mapping=mapping, sequence=max(mapping, offset + 2), offset=offset)
    return yaml


def _dump(yaml: YAML, doc: Any) -> str:
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _yaml(text: str) -> tuple[YAML, Any]:
    """A round-trip YAML set to the file's own indentation, and the loaded document.

    ruamel.yaml applies one indentation to the whole file, and guessing it from the first nested
    block can be wrong (`deployments:` lists indent their keys by four), so each common style is
    tried and the one whose output matches the most lines of the file wins.
    """
    original = text.splitlines()
    best: tuple[int, YAML] | None = None
    for mapping, offset in _STYLES:
        yaml = _new_yaml(mapping, offset)
        dumped = _dump(yaml, yaml.load(text)).splitlines()
        same = sum(1 for a, b in zip(original, dumped, strict=False) if a == b) - abs(len(original) - len(dumped))
        if best is None or same > best[0]:
            best = (same, yaml)
        if dumped == original:
            break
    assert best is not None
    yaml = best[1]
    return yaml, yaml.load(text)


def _deployment(doc: Any, name: str, where: str) -> CommentedMap:
    deployments = doc.get("deployments") if isinstance(doc, CommentedMap) else None
    if not isinstance(deployments, CommentedSeq):
        raise ProfileError("the profile has no `deployments:` list", where=where)
    names = []
    for dep in deployments:
        if not isinstance(dep, CommentedMap):
            continue
        dep_name = dep.get("name") or f"{dep.get('tenant')}-{dep.get('model')}"
        names.append(str(dep_name))
        if dep_name == name:
            return dep
    raise ProfileError(f"no deployment named {name!r}", where=where, fix=f"one of: {', '.join(names)}")


def _set_flag(args: CommentedSeq, flag: str, value: str) -> None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            args[i + 1] = value
            return
        if isinstance(arg, str) and arg.startswith(flag + "="):
            args[i] = f"{flag}={value}"
            return
    args.extend([flag, value])


def _drop_old_comment(dep: CommentedMap) -> None:
    """Remove an earlier tune's comment line above ``tuning:`` (it sits after the previous key's value)."""
    keys = list(dep.keys())
    index = keys.index("tuning")
    if index == 0:
        return
    previous = dep.ca.items.get(keys[index - 1])
    if not previous or len(previous) < 3 or previous[2] is None:
        return
    token = previous[2]
    lines = token.value.split("\n")
    kept = [line for line in lines if COMMENT_PREFIX not in line]
    if kept != lines:
        token.value = "\n".join(kept)


def update_text(text: str, deployment: str, values: Mapping[str, int | str], comment: str,
                *, where: str = "<profile>") -> str:
    """The profile text with ``values`` set under ``deployment``'s ``tuning:`` and ``comment`` above it."""
    unknown = set(values) - set(TUNED_KEYS) - set(FLAG_KEYS)
    if unknown:
        raise ValueError(f"tune does not write {sorted(unknown)}")
    yaml, doc = _yaml(text)
    dep = _deployment(doc, deployment, where)
    tuning = dep.get("tuning")
    if tuning is None:
        tuning = CommentedMap()
        # Before `limits:`/`env:` when there are any, where the examples keep it; else at the end.
        keys = list(dep.keys())
        position = next((keys.index(k) for k in ("limits", "env") if k in keys), len(keys))
        dep.insert(position, "tuning", tuning)
    elif not isinstance(tuning, CommentedMap):
        raise ProfileError("`tuning:` is not a mapping", where=f"{where}: deployment {deployment}")
    for key in TUNED_KEYS:
        if key in values:
            tuning[key] = values[key]
    for key, flag in FLAG_KEYS.items():
        if key in values:
            args = tuning.get("extra_args")
            if args is None:
                args = CommentedSeq()
                if tuning.fa.flow_style():
                    args.fa.set_flow_style()
                tuning["extra_args"] = args
            _set_flag(args, flag, str(values[key]))
    _drop_old_comment(dep)
    indent = _column(dep)
    dep.yaml_set_comment_before_after_key("tuning", before=f"{COMMENT_PREFIX} {comment}", indent=indent)
    return _dump(yaml, doc)


def _column(dep: CommentedMap) -> int:
    """The column the deployment's keys start at (where the comment line goes)."""
    line_col = getattr(dep.lc, "col", None)
    return int(line_col) if line_col is not None else 4


def write(path: str | Path, deployment: str, values: Mapping[str, int | str], comment: str) -> None:
    """Update the profile file in place (written to a temp file first, then renamed over it)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    new = update_text(text, deployment, values, comment, where=str(p))
    tmp = p.with_name(f".{p.name}.tune")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(p)
