"""apply() against the in-memory backend: ordering, idempotence and rollback of every step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backend_helpers import instance, plan

from tei_manager.backends.fake import FakeBackend, FakeHealthProbe
from tei_manager.errors import ApplyError, BackendError
from tei_manager.orchestrator import RollingBack, apply, down


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path))
    return FakeBackend()


def run(fake, p, **kw):
    events = []
    result = apply(p, fake, probe=FakeHealthProbe(fake), check_ports=False, clock=FakeClock(),
                   on_event=events.append, timeout_s=kw.pop("timeout_s", 30), **kw)
    return result, events


def handles(fake):
    return {o.name + (f".{o.slot}" if o.slot else ""): (o.handle, o.state) for o in fake.list()}


def test_create_then_reapply_touches_nothing(fake):
    p = plan(instance("a", port=1), instance("b", port=2))
    result, _ = run(fake, p)
    assert result.changed and [r.health for r in result.instances] == ["healthy", "healthy"]
    before, calls = handles(fake), len(fake.calls)
    result, _ = run(fake, p)
    assert not result.changed
    assert handles(fake) == before and len(fake.calls) == calls


def test_replace_on_same_port_stops_old_first_and_removes_it_after(fake):
    run(fake, plan(instance("a", port=1)))
    old = fake.live("a").handle
    fake.calls.clear()
    run(fake, plan(instance("a", port=1, tokens=8192)))
    assert [c for c in fake.calls if c[0] != "prepare"] == [
        ("stop", "a"), ("rename", "a->old"), ("create", "a"), ("start", "a"), ("remove", "a.old")]
    live = fake.live("a")
    assert live.handle != old and live.plan.settings.max_batch_tokens == 8192 and len(fake.list()) == 1


def test_replace_on_new_port_is_make_before_break(fake):
    run(fake, plan(instance("a", port=1)))
    fake.calls.clear()
    run(fake, plan(instance("a", port=5)))
    order = [c for c in fake.calls if c[0] != "prepare"]
    assert order.index(("start", "a")) < order.index(("stop", "a"))
    assert ("create", "a.next") in order and fake.live("a").port == 5 and len(fake.list()) == 1


def test_failed_replace_restores_the_old_instance_and_says_why(fake):
    run(fake, plan(instance("a", port=1), instance("b", port=2)))
    before = handles(fake)
    fake.crash_on_start["b"] = 1  # the new b dies at warm-up with a CUDA OOM in its logs
    with pytest.raises(ApplyError) as err:
        run(fake, plan(instance("a", port=1), instance("b", port=2, tokens=999999)))
    assert err.value.where == "b"
    assert "memory" in err.value.what and "rolled back" in err.value.what
    assert "max_batch_tokens" in err.value.fix
    assert handles(fake) == before  # same ids, all running, no leftover copy


def test_a_restored_instance_that_stays_unhealthy_makes_an_incomplete_rollback(fake):
    """Rollback waits for the previous version to answer again instead of claiming success."""
    run(fake, plan(instance("a", port=1)))
    fake.unhealthy.add("a")  # from now on neither the new nor the restored version answers /health
    with pytest.raises(ApplyError) as err:
        run(fake, plan(instance("a", port=1, tokens=8192)), timeout_s=5)
    assert "rollback incomplete" in err.value.what
    assert "restore the previous instance failed" in err.value.what


def test_gpu_start_failure_rolls_back_instances_created_earlier_in_the_same_apply(fake):
    run(fake, plan(instance("a", port=1)))
    before = handles(fake)
    fake.fail_start["gpu"] = "GPU 0 requested but this Docker Engine has no NVIDIA runtime"
    with pytest.raises(ApplyError) as err:
        run(fake, plan(instance("a", port=1), instance("new", port=3), instance("gpu", port=4, gpu=0)))
    assert err.value.where == "gpu" and "NVIDIA runtime" in err.value.what
    assert handles(fake) == before  # "new" was created, healthy, and removed again


def test_timeout_names_the_instance_and_rolls_back(fake):
    fake.unhealthy.add("a")
    events = []
    with pytest.raises(ApplyError) as err:
        apply(plan(instance("a", port=1)), fake, probe=FakeHealthProbe(fake), check_ports=False,
              clock=FakeClock(), timeout_s=5, on_event=events.append)
    assert err.value.where == "a" and "not healthy after 5 s" in err.value.what
    assert any(isinstance(e, RollingBack) for e in events)
    assert fake.list() == []


def test_removed_deployment_comes_back_when_apply_fails(fake):
    run(fake, plan(instance("a", port=1), instance("gone", port=2)))
    before = handles(fake)
    fake.fail_start["c"] = "boom"
    with pytest.raises(ApplyError):
        run(fake, plan(instance("a", port=1), instance("c", port=3)))
    assert handles(fake) == before


def test_missing_image_fails_before_anything_is_touched(fake):
    run(fake, plan(instance("a", port=1)))
    before, fake.calls = handles(fake), []
    fake.missing_images.add("nope:1")
    with pytest.raises(BackendError) as err:
        run(fake, plan(instance("a", port=1, tokens=1), instance("b", port=2, image="nope:1")))
    assert not isinstance(err.value, ApplyError)
    assert "could not be pulled" in err.value.what and err.value.where == "b"
    assert [c for c in fake.calls if c[0] != "prepare"] == [] and handles(fake) == before


def test_leftovers_of_an_interrupted_apply_are_cleared(fake):
    a = instance("a", port=1)
    fake.create(a, slot="old")
    run(fake, plan(a))
    assert [o.slot for o in fake.list()] == [""]


def test_down_removes_every_slot_of_the_profile_only(fake):
    run(fake, plan(instance("a", port=1)))
    run(fake, plan(instance("x", port=9, profile="other"), profile="other"))
    fake.create(instance("a", port=1), slot="next")
    assert sorted(down("p", fake)) == ["a", "a (next)"]
    assert [o.profile for o in fake.list()] == ["other"]


def test_one_change_at_a_time_per_profile(fake):
    from tei_manager.state import profile_lock
    from tei_manager.supervisor import Supervisor

    p = plan(instance("a", port=1))
    with profile_lock("p", purpose="apply from another terminal"):
        with pytest.raises(BackendError) as err:
            run(fake, p)
        assert "another tei-manager" in err.value.what and "apply from another terminal" in err.value.what
        # The supervisor sits the round out instead of "healing" an instance being replaced.
        assert Supervisor(fake, p, probe=FakeHealthProbe(fake)).tick() is False
    assert fake.list() == []
    run(fake, p)
    assert Supervisor(fake, p, probe=FakeHealthProbe(fake)).tick() is True
