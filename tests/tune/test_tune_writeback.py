"""`tune --write` on every shipped profile: only the tuned values and one comment change."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import yaml

from tei_manager.errors import ProfileError
from tei_manager.profiles import parse_profile
from tei_manager.tune.writeback import COMMENT_PREFIX, update_text, write

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.yaml"))
NEW: dict[str, int | str] = {"max_batch_tokens": 2048, "max_concurrent_requests": 96, "max_client_batch_size": 12,
                             "dtype": "float32", "forward_workers": 3}
COMMENT = "2026-11-30: p99 SLO 100 ms; 812 inputs/s at p99 74 ms (concurrency 8), peak 640 MiB; +31% over 4096/64/16"


def _deployments(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    return [d.get("name") or f"{d['tenant']}-{d['model']}" for d in data["deployments"]]


def _comments(text: str) -> list[str]:
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


CASES = [(p, d) for p in PROFILES for d in _deployments(p)]


@pytest.mark.parametrize(("path", "deployment"), CASES, ids=[f"{p.stem}:{d}" for p, d in CASES])
def test_write_changes_only_the_tuned_values_and_adds_one_comment(path: Path, deployment: str) -> None:
    before = path.read_text()
    after = update_text(before, deployment, NEW, COMMENT, where=str(path))

    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    # Exactly one new comment line, the tune's.
    new_comments = [line for line in added if line.strip().startswith("#")]
    assert len(new_comments) == 1 and COMMENT in new_comments[0] and COMMENT_PREFIX in new_comments[0]
    # Every other changed line is about a tuned key, or the `tuning:` line itself when it is a flow mapping.
    tuned = re.compile(r"(max_batch_tokens|max_concurrent_requests|max_client_batch_size|dtype|extra_args"
                       r"|--forward-workers|'3'|tuning:)")
    for line in removed + [a for a in added if a not in new_comments]:
        assert tuned.search(line), f"an unrelated line changed: {line!r}"
    # All the original comments survive, in order (end-of-line ones may move with their value).
    assert [c.strip() for c in _comments(before)] == [
        c.strip() for c in _comments(after) if COMMENT not in c
    ]

    # Same document apart from the tuned deployment's tuning, which now holds the new values.
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    for i, (a, b) in enumerate(zip(old["deployments"], new["deployments"], strict=True)):
        name = a.get("name") or f"{a['tenant']}-{a['model']}"
        tuning_b = b.pop("tuning")
        tuning_a = a.pop("tuning", {})
        assert a == b, f"deployment {i} changed beyond tuning"
        if name != deployment:
            assert tuning_a == tuning_b
            continue
        for key in ("max_batch_tokens", "max_concurrent_requests", "max_client_batch_size", "dtype"):
            assert tuning_b[key] == NEW[key]
        assert tuning_b["extra_args"][-2:] == ["--forward-workers", "3"]
        assert {k: v for k, v in tuning_b.items() if k not in NEW and k != "extra_args"} == {
            k: v for k, v in tuning_a.items() if k not in NEW and k != "extra_args"}
    old.pop("deployments"), new.pop("deployments")
    assert old == new
    # And it is still a valid profile.
    parse_profile(after, file=str(path), base_dir=path.parent)


def test_a_second_tune_replaces_its_comment_and_flag(tmp_path: Path) -> None:
    source = PROFILES[[p.stem for p in PROFILES].index("quickstart")]
    profile = tmp_path / "quickstart.yaml"
    profile.write_text(source.read_text())
    write(profile, "demo-embed", NEW, "first run")
    write(profile, "demo-embed", {"max_batch_tokens": 1024, "forward_workers": 2}, "second run")
    text = profile.read_text()
    assert text.count(COMMENT_PREFIX) == 1 and "second run" in text and "first run" not in text
    tuning = yaml.safe_load(text)["deployments"][0]["tuning"]
    assert tuning["max_batch_tokens"] == 1024 and tuning["extra_args"] == ["--forward-workers", "2"]
    # The profile's own comment inside `tuning:` is still there.
    assert "# CPU batches are padded and compute bound early" in text


def test_unknown_deployment_names_the_ones_there_are() -> None:
    text = PROFILES[0].read_text()
    with pytest.raises(ProfileError, match="no deployment named 'nope'") as err:
        update_text(text, "nope", {"max_batch_tokens": 1024}, "x", where="p.yaml")
    assert err.value.fix and "one of:" in err.value.fix


def test_a_deployment_without_tuning_gets_one_before_its_limits() -> None:
    text = (
        "name: t\nmodels:\n  m: {id: some/model, task: embed}\ntenants:\n  a: {api_keys: [{env: K}]}\n"
        "deployments:\n  - tenant: a\n    model: m\n    placement: cpu\n    limits: {memory: 2g}\n"
    )
    after = update_text(text, "a-m", {"max_batch_tokens": 1024}, "x")
    lines = after.splitlines()
    assert lines.index("    tuning:") < lines.index("    limits: {memory: 2g}")
    assert "      max_batch_tokens: 1024" in lines
    assert "  a: {api_keys: [{env: K}]}" in lines
