"""From a live Plan to tune requests and trial targets: what `tei-manager tune` and the TUI run.

The planner has already decided everything tune must not re-decide: the runtime `auto` resolved
to, the device and GPU, the image, the limits, the concrete `max_batch_tokens` for `auto`. This
module reads those from each deployment's planned `InstancePlan` (replica 0: the replicas are
identical) and hands them to `requests.request_for`; `tei_manager.services.tune_profile` opens the
backend and calls `run`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tei_manager.backends.base import Backend
from tei_manager.core.catalog import UnknownModel, model_info
from tei_manager.core.models import Profile
from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.errors import TeiManagerError

from .backend_target import BackendTrialTarget
from .requests import find_deployment, request_for
from .runner import Progress, TuneRequest, TuneResult, run_tune
from .search import Value
from .target import TrialTarget
from .trial import Schedule
from .workload import Workload, load, synthetic

MIB = 1024 * 1024
#: Seconds an instance takes to start, at the least, for the budget check (a small model on CPU).
MIN_START_SECONDS = 5.0


class TuneError(TeiManagerError):
    """A tune that cannot start: a budget too small, nothing to tune, a deployment that cannot be tuned
    (exit code 2: what was asked is wrong, nothing was started)."""

    exit_code = 2


@dataclass(frozen=True)
class TuneOptions:
    """What `tei-manager tune` was asked, apart from the profile and the backend."""

    slo_p99_ms: float
    budget_seconds: float
    deployments: Sequence[str] = ()  # empty: every deployment of the profile
    workload_path: Path | None = None
    full_grid: bool = False
    narrow: Mapping[str, Sequence[Value]] = field(default_factory=dict)
    schedule: Schedule = field(default_factory=Schedule)
    calibration_path: Path | None = None


def parse_space(items: Sequence[str]) -> dict[str, list[Value]]:
    """``--space max_batch_tokens=1024,4096`` (repeatable) -> {"max_batch_tokens": [1024, 4096]}."""
    out: dict[str, list[Value]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not eq or not key.strip() or not values:
            raise TuneError(f"cannot read {item!r}", where="--space",
                            fix="write it like max_batch_tokens=1024,4096 (one dimension per --space)")
        out[key.strip()] = [int(v) if v.isdigit() else v for v in values]
    return out


def default_dtype(inst: InstancePlan) -> str:
    """The dtype the instance runs at when its settings name none (what the runtimes default to)."""
    if inst.settings.dtype:
        return inst.settings.dtype
    if inst.vram is not None:
        return inst.vram.dtype
    return "float32" if inst.gpu is None else "float16"


def _workload(options: TuneOptions, kind: str, cache: dict[str, Workload]) -> Workload:
    if kind not in cache:
        if options.workload_path is not None:
            cache[kind] = load(options.workload_path, kind)  # type: ignore[arg-type]
        else:
            cache[kind] = synthetic(kind, languages=("en", "zh"))  # type: ignore[arg-type]
    return cache[kind]


def requests_for(profile: Profile, plan: Plan, options: TuneOptions) -> list[tuple[TuneRequest, InstancePlan]]:
    """One TuneRequest per deployment asked for, each with its planned instance (the trials' base)."""
    names = list(options.deployments) or [d.instance_prefix for d in profile.deployments]
    planned = plan.deployments()
    cache: dict[str, Workload] = {}
    out: list[tuple[TuneRequest, InstancePlan]] = []
    for name in dict.fromkeys(names):
        dep = find_deployment(profile, name)
        if name not in planned:
            raise TuneError(f"deployment {name} is not in the plan", where=name, fix="check `tei-manager plan`")
        base = planned[name][0]
        spec = profile.models[dep.model]
        kind = "rerank" if spec.task == "rerank" or dep.rerank_mode == "bi-encoder" else "embed"
        try:
            max_input = model_info(spec).max_input_length
        except UnknownModel as exc:
            raise TuneError(f"the planner does not know model {spec.id!r}", where=name,
                            fix=f"add {', '.join(exc.missing)} to the model in the profile") from None
        try:
            request = request_for(
                profile, name, runtime=base.runtime, workload=_workload(options, kind, cache),
                slo_p99_ms=options.slo_p99_ms, on_gpu=base.gpu is not None, max_input_tokens=max_input,
                default_dtype=default_dtype(base), max_batch_tokens=base.settings.max_batch_tokens,
                schedule=options.schedule, narrow={k: list(v) for k, v in options.narrow.items()} or None,
            )
        except ValueError as exc:
            raise TuneError(str(exc), where="--space", fix="name dimensions of the runtime's space "
                            "(max_batch_tokens, max_client_batch_size, max_batch_requests, forward_workers, "
                            "dtype)") from None
        out.append((request, base))
    return out


def minimum_budget(requests: Sequence[TuneRequest]) -> float:
    """The least budget that measures the current setting and one other per deployment (one step each)
    and confirms both (the confirmation round's re-measurements, one long step each)."""
    total = 0.0
    for r in requests:
        s = r.schedule
        trial = MIN_START_SECONDS + s.warmup_seconds + s.step_seconds
        confirmation = MIN_START_SECONDS + s.warmup_seconds + s.confirm_seconds
        total += 2 * trial + 2 * s.confirmations_per_setting * confirmation
    return total


def check_budget(requests: Sequence[TuneRequest], budget_seconds: float) -> None:
    need = minimum_budget(requests)
    if budget_seconds < need:
        raise TuneError(f"a budget of {budget_seconds:g} s is too small for one trial beyond the current setting "
                        f"of {len(requests)} deployment(s) and their confirmation", where="--budget",
                        fix=f"give at least {need:.0f}s (a useful tune takes minutes: --budget 10m)")


def capacity_bytes(plan: Plan, bases: Sequence[InstancePlan]) -> int | None:
    """The budget of the GPU the deployments share, when they all sit on one: they are tuned together."""
    gpus = {b.gpu for b in bases}
    if len(bases) < 2 or len(gpus) != 1 or None in gpus:
        return None
    (index,) = gpus
    return next((g.budget_mib * MIB for g in plan.gpus if g.index == index), None)


def gpu_name(plan: Plan, inst: InstancePlan) -> str | None:
    return next((g.name for g in plan.gpus if g.index == inst.gpu), None) if inst.gpu is not None else None


def run(profile: Profile, plan: Plan, backend: Backend, options: TuneOptions, *,
        progress: Progress | None = None, on_note: Callable[[str], None] | None = None) -> TuneResult:
    """Tune the deployments through ``backend``; every trial instance is removed before this returns."""
    pairs = requests_for(profile, plan, options)
    if not pairs:
        raise TuneError("the profile has no deployments", where=profile.name)
    requests = [r for r, _ in pairs]
    check_budget(requests, options.budget_seconds)
    targets = {r.deployment: BackendTrialTarget(backend, base, gpu_name=gpu_name(plan, base)) for r, base in pairs}
    began = time.monotonic()
    try:
        for target in targets.values():
            target.prepare()
            removed = target.clear_leftovers()
            if removed and on_note is not None:
                on_note(f"removed trial instances left by an earlier tune: {', '.join(removed)}")
        left = options.budget_seconds - (time.monotonic() - began)

        def target_for(request: TuneRequest) -> TrialTarget:
            return targets[request.deployment]

        return run_tune(requests, target_for, budget_seconds=max(left, 1.0), compare_full_grid=options.full_grid,
                        capacity_bytes=capacity_bytes(plan, [b for _, b in pairs]), progress=progress,
                        calibration_path=options.calibration_path)
    finally:
        for target in targets.values():
            with contextlib.suppress(TeiManagerError):
                target.close()
