"""Internal instance keys: derived from one secret per state directory, never stored themselves."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tei_manager.instance_keys import SECRET_FILE, bearer, instance_key


def test_keys_are_stable_per_instance_and_differ_between_instances(tmp_path: Path) -> None:
    a = instance_key("prod", "finance-embed", root=tmp_path)
    assert a == instance_key("prod", "finance-embed", root=tmp_path)
    assert len(a) == 64
    assert a != instance_key("prod", "hr-embed", root=tmp_path)
    assert a != instance_key("staging", "finance-embed", root=tmp_path)
    assert bearer("prod", "finance-embed", root=tmp_path) == {"authorization": f"Bearer {a}"}


def test_the_secret_is_private_and_holds_no_key(tmp_path: Path) -> None:
    key = instance_key("prod", "finance-embed", root=tmp_path)
    secret = tmp_path / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert key not in secret.read_text()


def test_another_state_directory_gives_other_keys(tmp_path: Path) -> None:
    assert instance_key("p", "i", root=tmp_path / "a") != instance_key("p", "i", root=tmp_path / "b")


def test_deleting_the_secret_rotates_every_key(tmp_path: Path) -> None:
    before = instance_key("p", "i", root=tmp_path)
    (tmp_path / SECRET_FILE).unlink()
    assert instance_key("p", "i", root=tmp_path) != before


def test_processes_racing_to_create_the_secret_agree(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: instance_key("p", "i", root=tmp_path), range(32)))
    assert len(keys) == 1
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]
