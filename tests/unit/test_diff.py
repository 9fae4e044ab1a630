"""diff(): what apply does for each instance, decided by spec hash alone."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from backend_helpers import instance, plan

from tei_manager.core.diff import ObservedInstance, diff


def observed(inst, *, state="running", slot="", spec_hash=None, name=None, profile=None) -> ObservedInstance:
    return ObservedInstance(
        name=name or inst.name, profile=profile or inst.profile, backend="fake", handle=f"h-{inst.name}-{slot}",
        state=state, spec_hash=spec_hash or inst.spec_hash, plan=inst, slot=slot, bind=inst.bind,
        port=inst.host_port,
    )


def kinds(actions):
    return [(a.kind, a.name) for a in actions]


def test_nothing_running_creates_everything_in_plan_order():
    a, b = instance("a", port=1), instance("b", port=2)
    assert kinds(diff(plan(a, b), [])) == [("create", "a"), ("create", "b")]


def test_same_hash_running_is_kept():
    a = instance("a")
    actions = diff(plan(a), [observed(a)])
    assert kinds(actions) == [("keep", "a")]
    assert not any(x.changes_something for x in actions)


def test_changed_tuning_replaces_only_that_instance_and_says_what_changed():
    a, b = instance("a", port=1), instance("b", port=2)
    b2 = instance("b", port=2, tokens=8192)
    actions = diff(plan(a, b2), [observed(a), observed(b)])
    assert kinds(actions) == [("keep", "a"), ("replace", "b")]
    assert "settings" in actions[1].reason
    assert actions[1].observed.handle == "h-b-" and actions[1].desired == b2


def test_same_hash_but_exited_is_replaced():
    a = instance("a")
    actions = diff(plan(a), [observed(a, state="exited")])
    assert kinds(actions) == [("replace", "a")]
    assert "exited" in actions[0].reason


def test_engine_restarting_counts_as_up_to_date():
    a = instance("a")
    assert kinds(diff(plan(a), [observed(a, state="restarting")])) == [("keep", "a")]


def test_instances_no_longer_in_profile_are_removed():
    a, gone = instance("a", port=1), instance("gone", port=2)
    assert kinds(diff(plan(a), [observed(a), observed(gone)])) == [("keep", "a"), ("remove", "gone")]


def test_leftover_slot_copies_are_removed_and_do_not_count_as_live():
    a = instance("a")
    actions = diff(plan(a), [observed(a, slot="old")])
    assert kinds(actions) == [("create", "a"), ("remove", "a")]
    assert actions[1].observed.slot == "old"


def test_other_profiles_are_never_touched():
    a = instance("a")
    other = instance("x", profile="other")
    assert kinds(diff(plan(a), [observed(a), observed(other)])) == [("keep", "a")]


def test_empty_plan_removes_all_of_its_profile():
    a = instance("a")
    assert kinds(diff(plan(), [observed(a)])) == [("remove", "a")]
