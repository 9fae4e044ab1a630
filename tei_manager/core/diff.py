"""Desired versus observed: what `apply` must do to converge.

Pure core.  `ObservedInstance` is what a backend reports about one thing it runs (a container
or a local process); `diff()` compares those against a Plan by spec hash and returns one
`Action` per instance name, plus a `remove` for every observed leftover of the same profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from tei_manager.core.plan import InstancePlan, Plan

ActionKind = Literal["create", "replace", "keep", "remove"]
# Normalised lifecycle state across engines: docker's created/running/restarting/paused/exited/dead
# map onto these; a process is running, exited or created (recorded, never started).
RunState = Literal["created", "running", "restarting", "paused", "exited", "dead", "unknown"]


@dataclass(frozen=True)
class ObservedInstance:
    """One running (or stopped) instance as a backend sees it, whatever the engine.

    `handle` identifies it to the backend that reported it (a container id, a state-file key).
    `slot` is "" for the live instance; "old"/"next" mark the temporary copies an apply keeps
    while it replaces something, so a crashed apply leaves visible, removable leftovers.
    """

    name: str
    profile: str
    backend: str
    handle: str
    state: RunState
    spec_hash: str | None
    plan: InstancePlan | None = field(default=None, compare=False, repr=False)
    slot: str = ""
    bind: str | None = None
    port: int | None = None
    started_at: datetime | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    engine_restarts: int = 0
    pid: int | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Action:
    """One step of convergence for one instance name."""

    kind: ActionKind
    name: str
    desired: InstancePlan | None = None
    observed: ObservedInstance | None = None
    reason: str = ""

    @property
    def changes_something(self) -> bool:
        return self.kind != "keep"


def _changed_fields(old: InstancePlan | None, new: InstancePlan) -> list[str]:
    """Top-level plan fields that differ, to say *why* a replace happens."""
    if old is None:
        return []
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return sorted(k for k in after if before.get(k) != after.get(k))


def diff(plan: Plan, observed: list[ObservedInstance]) -> list[Action]:
    """Compare the plan with what runs.

    - no live instance of that name: `create`
    - a live instance with the same spec hash that is running (or restarting by itself): `keep`
    - a different hash, or the same hash but stopped/dead: `replace`
    - observed instances of this profile that the plan no longer has, and any temporary copy
      (slot "old"/"next") left by an interrupted apply: `remove`

    Instances of other profiles are never touched.  Actions come in plan order, then removals.
    """
    mine = [o for o in observed if o.profile == plan.profile]
    live = {o.name: o for o in mine if o.slot == ""}
    actions: list[Action] = []
    for inst in plan.instances:
        current = live.get(inst.name)
        if current is None:
            actions.append(Action("create", inst.name, desired=inst, reason="not running"))
        elif current.spec_hash != inst.spec_hash:
            fields = _changed_fields(current.plan, inst)
            why = f"changed: {', '.join(fields)}" if fields else "spec changed"
            actions.append(Action("replace", inst.name, desired=inst, observed=current, reason=why))
        elif current.state in ("running", "restarting"):
            actions.append(Action("keep", inst.name, desired=inst, observed=current, reason="up to date"))
        else:
            actions.append(Action("replace", inst.name, desired=inst, observed=current,
                                  reason=f"up to date but {current.state}"))
    wanted = {inst.name for inst in plan.instances}
    for obs in mine:
        if obs.slot:
            actions.append(Action("remove", obs.name, observed=obs, reason=f"leftover {obs.slot} copy"))
        elif obs.name not in wanted:
            actions.append(Action("remove", obs.name, observed=obs, reason="no longer in the profile"))
    return actions
