"""Internal instance keys: derived from one secret per state directory, never stored themselves."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tei_manager.core.facts import HostFacts
from tei_manager.core.models import Profile
from tei_manager.core.plan import Plan
from tei_manager.core.planner import plan
from tei_manager.instance_keys import SECRET_FILE, bearer, instance_env, instance_key, with_key_ids


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


def _plan(protect: bool) -> Plan:
    profile = Profile.model_validate({
        "name": "p",
        "models": {"m": {"id": "sentence-transformers/all-MiniLM-L6-v2", "task": "embed"}},
        "tenants": {"t": {"api_keys": [{"env": "T_KEY"}]}},
        "deployments": [{"tenant": "t", "model": "m", "placement": "cpu", "runtime": "fallback", "port": 9100}],
        "gateway": {"protect_instances": protect},
    })
    return plan(profile, HostFacts())


def test_a_new_secret_changes_the_spec_hash_so_apply_rotates_the_keys(tmp_path: Path) -> None:
    planned = _plan(True)
    first = with_key_ids(planned, root=tmp_path).instances[0]
    again = with_key_ids(planned, root=tmp_path).instances[0]
    assert first.spec_hash == again.spec_hash  # an unchanged secret: nothing to do
    (tmp_path / SECRET_FILE).unlink()
    rotated = with_key_ids(planned, root=tmp_path).instances[0]
    assert rotated.spec_hash != first.spec_hash
    dumped = rotated.model_dump_json()
    assert instance_key("p", rotated.name, root=tmp_path) not in dumped  # the plan names the secret, never a key


def test_unprotected_instances_get_no_key(tmp_path: Path) -> None:
    inst = with_key_ids(_plan(False), root=tmp_path).instances[0]
    assert (inst.internal_auth, inst.internal_key_id) == (False, None)
    assert instance_env(inst) == {}
    assert not (tmp_path / SECRET_FILE).exists()  # no secret is made for nothing
