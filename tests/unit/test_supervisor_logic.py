"""Supervisor decisions with a fake clock and the in-memory backend: thresholds, back-off, grace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backend_helpers import instance, plan

from tei_manager.backends.fake import FakeBackend, FakeHealthProbe
from tei_manager.health import BackoffPolicy, HealthTracker
from tei_manager.supervisor import Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


POLICY = BackoffPolicy(failure_threshold=3, initial_delay_s=10, factor=2, max_delay_s=40, reset_after_s=100,
                       startup_grace_s=30)


@pytest.fixture
def rig(tmp_path, monkeypatch):
    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path))
    fake, clock, events = FakeBackend(), FakeClock(), []
    a = instance("a", port=1)
    fake.start(fake.create(a))
    sup = Supervisor(fake, plan(a), clock=clock, on_event=events.append, policy=POLICY,
                     probe=FakeHealthProbe(fake), wall_time=lambda: clock.now)
    return fake, clock, sup, events


def kinds(events):
    return [e.kind for e in events]


def test_backoff_delays_grow_and_are_capped():
    assert [POLICY.delay(n) for n in range(6)] == [0, 10, 20, 40, 40, 40]


def test_healthy_instance_is_left_alone(rig):
    fake, clock, sup, events = rig
    for _ in range(5):
        sup.tick()
        clock.sleep(5)
    assert kinds(events) == ["healthy"]
    assert ("stop", "a") not in fake.calls


def test_restart_only_after_threshold_of_failed_probes(rig):
    fake, _clock, sup, events = rig
    sup.tick()  # healthy
    fake.unhealthy.add("a")
    sup.tick()
    sup.tick()
    assert "restarting" not in kinds(events)
    sup.tick()  # third failure in a row
    assert kinds(events)[-3:] == ["unhealthy", "restarting", "restarted"]
    assert sup.snapshot()[0].restarts == 1


def test_failures_during_startup_grace_do_not_count(rig):
    fake, clock, sup, events = rig
    fake.unhealthy.add("a")
    for _ in range(5):  # still within 30 s of the first sight
        sup.tick()
        clock.sleep(5)
    assert "restarting" not in kinds(events)
    clock.sleep(10)
    for _ in range(3):
        sup.tick()
    assert "restarted" in kinds(events)


def test_exited_instance_restarts_at_once_then_backs_off(rig):
    fake, clock, sup, events = rig
    sup.tick()
    fake.kill("a")
    sup.tick()
    assert kinds(events)[-3:] == ["exited", "restarting", "restarted"]
    assert fake.live("a").state == "running"

    fake.kill("a")  # dies again right away: the second restart waits 10 s
    sup.tick()
    assert kinds(events)[-1] == "exited"
    clock.sleep(9)
    sup.tick()
    assert kinds(events).count("restarted") == 1
    clock.sleep(1)
    sup.tick()
    assert kinds(events).count("restarted") == 2

    fake.kill("a")  # third in a row: 20 s
    clock.sleep(19)
    sup.tick()
    assert kinds(events).count("restarted") == 2
    clock.sleep(1)
    sup.tick()
    assert kinds(events).count("restarted") == 3


def test_streak_resets_after_staying_healthy(rig):
    fake, clock, sup, events = rig
    sup.tick()
    fake.kill("a")
    sup.tick()
    fake.kill("a")
    clock.sleep(10)
    sup.tick()  # second restart: streak 2
    assert sup.trackers["a"].streak == 2
    for _ in range(30):  # healthy for 150 s > reset_after_s
        clock.sleep(5)
        sup.tick()
    fake.kill("a")
    sup.tick()  # immediate again: the streak started over
    assert kinds(events).count("restarted") == 3


def test_missing_instance_is_recreated_from_the_plan(rig):
    fake, _clock, sup, events = rig
    fake.remove(fake.live("a"))
    sup.tick()
    assert kinds(events)[-3:] == ["missing", "restarting", "restarted"]
    assert fake.live("a").state == "running"


def test_failed_restart_is_reported_backs_off_and_is_not_counted(rig):
    fake, clock, sup, events = rig
    sup.tick()
    fake.kill("a")
    fake.fail_start["a"] = "engine says no"
    sup.tick()
    assert kinds(events)[-1] == "restart-failed"
    assert sup.snapshot()[0].restarts == 0
    del fake.fail_start["a"]
    sup.tick()  # within the back-off window: nothing
    assert kinds(events)[-1] == "restart-failed"
    clock.sleep(10)
    sup.tick()
    assert kinds(events)[-1] == "restarted"


def test_drifted_instance_is_left_to_apply(rig):
    fake, _clock, sup, events = rig
    sup.plan = plan(instance("a", port=1, tokens=1))  # the profile changed; apply has not run
    fake.kill("a")
    sup.tick()
    sup.tick()
    assert kinds(events) == ["drifted"]


def test_restarts_are_recorded_for_status(rig, tmp_path):
    from tei_manager.state import supervisor_restarts

    fake, _clock, sup, _events = rig
    fake.kill("a")
    sup.tick()
    assert supervisor_restarts("p") == {"a": 1}


def test_tracker_threshold_and_recovery_are_pure():
    t = HealthTracker(BackoffPolicy(failure_threshold=2, startup_grace_s=0))
    t.record(True, 0)
    t.record(False, 1)
    assert not t.due(1)
    t.record(False, 2)
    assert t.phase == "unhealthy" and t.due(2)
    t.restarted(2)
    t.record(True, 3)
    assert t.phase == "healthy" and t.consecutive_failures == 0


def test_grace_counts_from_the_instances_real_start(tmp_path, monkeypatch):
    from datetime import datetime, timedelta, timezone

    monkeypatch.setenv("TEI_MANAGER_STATE_DIR", str(tmp_path))
    fake, clock, events = FakeBackend(), FakeClock(), []
    a = instance("a", port=1)
    fake.start(fake.create(a))
    handle = fake.live("a").handle
    fake.records[handle].started_at = datetime.now(timezone.utc) - timedelta(hours=1)
    fake.unhealthy.add("a")  # broken for an hour when the supervisor first looks
    sup = Supervisor(fake, plan(a), clock=clock, on_event=events.append, policy=POLICY,
                     probe=FakeHealthProbe(fake))
    for _ in range(3):
        sup.tick()
    assert kinds(events) == ["unhealthy", "restarting", "restarted"]
