"""profile + host facts -> Plan.  Pure: no I/O, no clock, no randomness; the same input gives the same Plan.

What it decides, in this order:

1. **Instances.** Each deployment becomes `replicas` instances named `<prefix>` (one replica) or
   `<prefix>-<n>` (n from 0).
2. **Devices.** `cpu`; `{gpu: N}` pins; `{gpu: [N, M]}` spreads replicas round-robin; `shared`
   instances are bin-packed after the pinned ones, largest VRAM estimate first, each onto the GPU
   with the most room left ("worst fit decreasing" keeps GPUs evenly loaded).
3. **Runtime.** `auto` takes the first runtime of the registry (tei_manager.runtimes: TEI, then
   the fallback worker) that has neither a hard obstacle (its own: no image for this GPU or CPU
   architecture, no bfloat16) nor a backend obstacle (`Capabilities`: engine unreachable, no
   GPU runtime, nothing of that runtime the backend can start).  `rerank_mode: bi-encoder` means
   a runtime that ranks with embeddings.  The reason is kept in `InstancePlan.runtime_reason`.
4. **VRAM.** Per GPU: budget = total - `gpu_headroom_mib` - memory held by processes that are not
   ours (live hosts only).  `max_batch_tokens: auto` instances share what the fixed ones leave.
   Over budget -> `OvercommitError` naming the GPU, each instance's estimate and what to change.
5. **Ports.** Explicit ports (replicas take p, p+1, ...) first, then `auto` ports from
   AUTO_PORT_BASE upward, skipping explicit ones, the gateway's port and `observed_ports`.
6. **Settings.** The runtime's settings as typed values (`RuntimeSettings`); the runtime renders
   them as flags when a backend starts the instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tei_manager.core.capabilities import Capabilities
from tei_manager.core.catalog import KNOWN_MODELS, ModelInfo, UnknownModel, model_info
from tei_manager.core.facts import GpuFact, HostFacts
from tei_manager.core.models import (
    Deployment,
    GpuPlacement,
    ModelSpec,
    Profile,
    Runtime,
    Task,
    dotted,
    reference_problems,
)
from tei_manager.core.plan import (
    GpuBudget,
    InstancePlan,
    MeasuredVram,
    ModelCache,
    ModelSource,
    Plan,
    RuntimeSettings,
    VramEstimate,
)
from tei_manager.core.tuning import (
    Calibration,
    CalibrationKey,
    VramProfile,
    auto_max_batch_tokens,
    cpu_auto_max_batch_tokens,
    default_dtype,
    estimate_vram,
    largest_fitting,
    min_batch_tokens,
)
from tei_manager.errors import OvercommitError, PlanError
from tei_manager.runtimes.base import Device
from tei_manager.runtimes.base import Runtime as RuntimeDef
from tei_manager.runtimes.registry import get_runtime, runtimes

#: First port tried for `port: auto` (TEI's conventional port in the seeds).
AUTO_PORT_BASE = 8080
MAX_PORT = 65535


@dataclass
class _Slot:
    """One instance while it is being planned (mutable scratch; becomes an InstancePlan)."""

    index: int  # deployment index, for error locations
    dep: Deployment
    spec: ModelSpec
    info: ModelInfo
    task: Task
    replica: int
    name: str
    shared_placement: bool = False
    gpu: int | None = None
    cc: tuple[int, int] | None = None  # compute capability of `gpu`
    runtime: Runtime = "fallback"
    reason: str = ""
    dtype: str = "float32"
    flash: bool = True
    max_batch_tokens: int | None = None  # None while `auto` is unresolved
    vram: VramEstimate | None = None
    measured: MeasuredVram | None = None  # tune's measured peak for exactly this instance, when there is one
    port: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"deployments[{self.index}] ({self.dep.instance_prefix})"

    @property
    def auto(self) -> bool:
        return self.dep.tuning.max_batch_tokens == "auto"

    @property
    def vram_profile(self) -> VramProfile:
        return get_runtime(self.runtime).vram


def engine_capabilities(facts: HostFacts) -> Capabilities:
    """What a container engine described by `facts.docker` can run; when it does not answer,
    local executables (the fallback worker).  What `--backend auto` amounts to, and the planner's
    default when the caller names no backend."""
    engine = facts.docker
    if engine.reachable:
        return Capabilities(
            backend="container engine", artifact="image", gpus=engine.nvidia_runtime,
            summary="Docker reachable",
            no_gpu="Docker has no NVIDIA runtime, so a {runtime} container cannot use GPU {gpu}",
        )
    why = f"Docker Engine not reachable ({engine.error or 'unknown reason'})"
    return Capabilities(backend="local process", artifact="executable", summary="local processes",
                        other_artifact=why,
                        warnings=(f"{why}: `runtime: auto` deployments use the fallback worker",))


def plan(profile: Profile, facts: HostFacts, *, observed_ports: Iterable[int] | None = frozenset(),
         source: str | None = None, own_pids: Iterable[int] = frozenset(),
         capabilities: Capabilities | None = None, calibration: Calibration | None = None,
         sized_models: Mapping[str, ModelInfo] | None = None) -> Plan:
    """Plan every instance of `profile` on the host described by `facts`.

    `observed_ports`: host ports taken by something other than this profile's instances; `auto`
    ports skip them (None means unknown, treated as empty).  `own_pids`: PIDs of this profile's
    running instances, whose VRAM is not counted as "in use by others" when re-planning a live host.
    `source` is recorded in `Plan.source` (the profile's path).  `capabilities`: what the backend
    that will run the plan can host (default: `engine_capabilities(facts)`).  `calibration`: peaks
    `tune` measured (the planning service reads the store); a GPU instance whose exact model,
    runtime, dtype, batch budget and GPU were measured is budgeted by the measurement, every other
    one by the VRAM model's estimate, and `Plan.measured_vram` says which.  `sized_models`: model
    key -> numbers read from the model's own files (tei_manager.models); per number, the profile's
    value wins over the files', and the files' over the catalog's (`Plan.model_numbers` says which).

    Raises PlanError (unknown model numbers, GPU not on the host, TEI forced where it cannot run,
    port collisions, a batch budget TEI would refuse) and OvercommitError (VRAM).
    """
    problems = reference_problems(profile)
    if problems:
        loc, message, hint = problems[0]
        raise PlanError(message, where=dotted(loc), fix=hint)

    warnings: list[str] = []
    if not facts.gpus and facts.nvml_error:
        warnings.append(
            f"CPU-only host: NVML not available ({facts.nvml_error}); GPU placements cannot be planned here "
            "- pass --gpus to plan for another host"
        )
    caps = capabilities or engine_capabilities(facts)
    # Only worth saying when it changes a decision: some deployment leaves the runtime to us.
    if any(d.runtime == "auto" for d in profile.deployments):
        warnings.extend(caps.warnings)

    numbers = {key: model_numbers(spec, (sized_models or {}).get(key)) for key, spec in profile.models.items()
               if any(d.model == key for d in profile.deployments)}
    slots = _expand(profile, facts, numbers)
    budgets = _budgets(profile, facts, set(own_pids))
    planned: dict[int, list[_Slot]] = {g.index: [] for g in facts.gpus}

    for slot in slots:
        if slot.shared_placement:
            continue
        _choose_runtime(slot, profile, facts, caps, facts.gpu(slot.gpu) if slot.gpu is not None else None)
        _initial_estimate(slot)
        if slot.gpu is not None:
            planned[slot.gpu].append(slot)

    shared = [s for s in slots if s.shared_placement]
    if shared:
        _place_shared(shared, profile, facts, caps, budgets, planned)

    for index, members in planned.items():
        _calibrate(members, facts, calibration or {})  # fixed budgets: what `auto` shares out is what is left
        _resolve_auto(index, members, budgets, facts)
        _calibrate(members, facts, calibration or {})
    for index in planned:
        _check_budget(index, planned, budgets, facts, profile)

    # Where the engine decides how instances are reached (a cluster), this host's ports do not matter.
    observed = set() if caps.allocates_host_ports else set(observed_ports or ())
    _assign_ports(slots, profile, observed, warnings)

    instances = tuple(_instance(slot, profile, facts) for slot in slots)
    for slot in slots:
        warnings.extend(slot.warnings)
    gpus = tuple(
        GpuBudget(
            index=g.index,
            name=g.name,
            total_mib=g.total_mib,
            headroom_mib=profile.gpu_headroom_mib,
            in_use_mib=budgets[g.index][1],
            budget_mib=budgets[g.index][0],
            planned_mib=sum(_mib(s) for s in planned[g.index]),
            instances=tuple(s.name for s in planned[g.index]),
        )
        for g in facts.gpus
    )
    return Plan(profile=profile.name, source=source, instances=instances, gpus=gpus,
                warnings=tuple(dict.fromkeys(warnings)), host=facts.origin,
                backend=caps.backend if capabilities else None, tenants=dict(profile.tenants),
                gateway=profile.gateway,
                measured_vram={s.name: s.measured for s in slots if s.measured is not None},
                model_numbers={key: found[1] for key, found in numbers.items() if isinstance(found, tuple)})


# --- 1 and 2: instances and devices ------------------------------------------------------------------


def _host_gpus(facts: HostFacts) -> str:
    if not facts.gpus:
        reason = f" (NVML: {facts.nvml_error})" if facts.nvml_error else ""
        return f"this host has no GPU{reason}"
    return "this host has " + ", ".join(f"GPU {g.index} ({g.name})" for g in facts.gpus)


def model_numbers(spec: ModelSpec, sized: ModelInfo | None) -> tuple[ModelInfo, str] | UnknownModel:
    """The VRAM model's numbers for one model, and where they came from (`profile + files`, ...).

    Per number: the profile's value, else the one read from the model's files, else the catalog's.
    Returns (not raises) UnknownModel when a number is nowhere, so only models a deployment uses fail.
    """
    if sized is None:
        try:
            info = model_info(spec)
        except UnknownModel as exc:
            return exc
        given = [spec.params_millions, spec.hidden_size, spec.num_layers, spec.max_input_length]
        origins = ["profile"] * any(v is not None for v in given) + ["catalog"] * (None in given)
        return info, " + ".join(origins)
    known = KNOWN_MODELS.get(spec.id)
    used: set[str] = set()

    def pick(mine: float | int | None, files: float | int) -> float | int:
        used.add("profile" if mine is not None else "files")
        return mine if mine is not None else files

    hidden = int(pick(spec.hidden_size, sized.hidden_size))
    info = ModelInfo(
        hub_id=spec.id, task=spec.task, params_millions=float(pick(spec.params_millions, sized.params_millions)),
        hidden_size=hidden, num_layers=int(pick(spec.num_layers, sized.num_layers)),
        max_input_length=int(pick(spec.max_input_length, sized.max_input_length)),
        num_heads=sized.num_heads if hidden == sized.hidden_size else max(1, hidden // (sized.hidden_size
                                                                                          // sized.num_heads)),
        default_pooling=sized.default_pooling or (known.default_pooling if known else None),
    )
    return info, " + ".join(o for o in ("profile", "files") if o in used)


def _expand(profile: Profile, facts: HostFacts,
            infos: Mapping[str, tuple[ModelInfo, str] | UnknownModel] | None = None) -> list[_Slot]:
    slots: list[_Slot] = []
    names: dict[str, str] = {}
    for i, dep in enumerate(profile.deployments):
        spec = profile.models[dep.model]
        found = (infos or {}).get(dep.model) or model_numbers(spec, None)
        if isinstance(found, UnknownModel):
            raise PlanError(
                f"the planner does not know {spec.id!r} and the profile leaves out {', '.join(found.missing)}",
                where=f"models.{dep.model}",
                fix="give params_millions, hidden_size, num_layers and max_input_length on the model "
                "(from its config.json), or a `path` / `hub.endpoint` that `plan` can read its files from",
            )
        info = found[0]
        task: Task = "rerank" if dep.rerank_mode == "bi-encoder" else spec.task
        placement = dep.placement
        if isinstance(placement, GpuPlacement):
            for index in placement.indices:
                if facts.gpu(index) is None:
                    raise PlanError(
                        f"placement asks for GPU {index} but {_host_gpus(facts)}",
                        where=f"deployments[{i}].placement ({dep.instance_prefix})",
                        fix="use an index the host has, `shared` or `cpu`; to plan for another host pass "
                        '--gpus "0:NVIDIA L20:46068MiB:8.9,..."',
                    )
        elif placement == "shared" and not facts.gpus:
            raise PlanError(
                f"placement `shared` needs a GPU but {_host_gpus(facts)}",
                where=f"deployments[{i}].placement ({dep.instance_prefix})",
                fix="use `placement: cpu`, or pass --gpus to plan for another host",
            )
        for r in range(dep.replicas):
            name = dep.instance_prefix if dep.replicas == 1 else f"{dep.instance_prefix}-{r}"
            if name in names:
                raise PlanError(
                    f"instance name {name!r} comes from both {names[name]} and deployments[{i}]",
                    where=f"deployments[{i}].name",
                    fix="give one of the deployments another `name`",
                )
            names[name] = f"deployments[{i}]"
            slot = _Slot(index=i, dep=dep, spec=spec, info=info, task=task, replica=r, name=name)
            if isinstance(placement, GpuPlacement):
                slot.gpu = placement.indices[r % len(placement.indices)]
            elif placement == "shared":
                slot.shared_placement = True
            slots.append(slot)
    return slots


# --- 3: runtime ----------------------------------------------------------------------------------------


def _obstacles(runtime: RuntimeDef, slot: _Slot, profile: Profile, caps: Capabilities,
               device: Device) -> tuple[str | None, str | None]:
    """(hard, soft): why `runtime` can never run this instance on this device, and why it cannot on
    this backend right now.  A hard obstacle refuses `runtime: X`; a soft one only warns."""
    hard = runtime.obstacle(slot.dep, profile, device)
    if hard:
        return hard, None
    packaged = runtime.image(profile, device) if caps.artifact == "image" else runtime.executable
    return None, caps.obstacle(runtime.name, has_artifact=packaged is not None, gpu=device.gpu)


def _choose_runtime(slot: _Slot, profile: Profile, facts: HostFacts, caps: Capabilities,
                    gpu: GpuFact | None) -> None:
    dep = slot.dep
    device = Device(gpu=gpu, cpu_arch=facts.cpu_arch)
    slot.cc = gpu.compute_capability if gpu is not None else None
    if dep.rerank_mode == "bi-encoder" and dep.runtime == "auto":
        chosen = next(r for r in runtimes() if r.ranks_with_embeddings)
        slot.runtime = chosen.name
        slot.reason = f"rerank_mode bi-encoder: only the {chosen.name} runtime ranks with an embedding model"
        _, soft = _obstacles(chosen, slot, profile, caps, device)
        if soft:
            slot.warnings.append(f"{slot.name}: runtime {chosen.name}, but {soft}; apply will fail on this host")
    elif dep.runtime != "auto":
        runtime = get_runtime(dep.runtime)
        hard, soft = _obstacles(runtime, slot, profile, caps, device)
        if hard:
            raise PlanError(
                f"runtime {runtime.name} cannot run here: {hard}",
                where=f"{slot.where}.runtime",
                fix="use `runtime: auto` (falls back) or another runtime, or place it on another GPU or `cpu`",
            )
        slot.runtime, slot.reason = runtime.name, f"runtime: {runtime.name} in the profile"
        if soft:
            slot.warnings.append(f"{slot.name}: runtime {runtime.name}, but {soft}; apply will fail on this host")
    else:
        reasons: list[str] = []
        for runtime in runtimes():
            hard, soft = _obstacles(runtime, slot, profile, caps, device)
            if hard is None and soft is None:
                break
            reasons.append(hard or soft or "")
        else:
            # Nothing can run here; the last resort is planned so that `plan` can still show it.
            runtime = runtimes()[-1]
            slot.warnings.append(f"{slot.name}: no runtime can run on this backend here "
                                 f"({'; '.join(reasons)}); apply will fail on this host")
        slot.runtime = runtime.name
        if reasons:
            slot.reason = f"auto: {reasons[0]}"
        else:
            image = runtime.image(profile, device) if caps.artifact == "image" else runtime.executable
            slot.reason = f"auto: {caps.summary or caps.backend}, {runtime.name} {caps.artifact} {image} " \
                          f"for {device.describe()}"
    slot.dtype = default_dtype(on_gpu=gpu is not None, override=dep.tuning.dtype)
    slot.flash = get_runtime(slot.runtime).flash_attention(device)


# --- 4: VRAM -------------------------------------------------------------------------------------------


def _initial_estimate(slot: _Slot) -> None:
    """Fixed budgets get their estimate; `auto` on a GPU is estimated at its floor until resolved."""
    tuning = slot.dep.tuning
    if isinstance(tuning.max_batch_tokens, int):
        slot.max_batch_tokens = tuning.max_batch_tokens
    elif slot.gpu is None:
        slot.max_batch_tokens = cpu_auto_max_batch_tokens(slot.info)
    if slot.gpu is None:
        slot.vram = None
        return
    tokens = slot.max_batch_tokens or min_batch_tokens(slot.info, accept_truncation=tuning.accept_truncation)
    slot.vram = estimate_vram(slot.info, dtype=slot.dtype, max_batch_tokens=tokens, flash=slot.flash,
                              runtime=slot.vram_profile)


def _calibrate(members: list[_Slot], facts: HostFacts, calibration: Calibration) -> None:
    """Use tune's measured peak where one exists for exactly this instance on this GPU model."""
    for slot in members:
        slot.measured = None
        gpu = facts.gpu(slot.gpu) if slot.gpu is not None else None
        if slot.vram is None or gpu is None:
            continue
        key = CalibrationKey(slot.spec.id, slot.runtime, slot.dtype, slot.vram.max_batch_tokens, gpu.name)
        peak = calibration.get(key)
        if peak is not None:
            slot.measured = MeasuredVram(total_mib=-(-peak.peak_bytes // 2**20), estimated_mib=slot.vram.total_mib,
                                         measured_at=peak.measured_at)


def _budgets(profile: Profile, facts: HostFacts, own_pids: set[int]) -> dict[int, tuple[int, int]]:
    """GPU index -> (budget MiB, MiB in use by processes that are not ours)."""
    out: dict[int, tuple[int, int]] = {}
    for g in facts.gpus:
        in_use = 0
        if g.free_mib is not None:
            ours = sum(p.used_mib for p in g.processes if p.pid in own_pids)
            in_use = max(0, g.total_mib - g.free_mib - ours)
        out[g.index] = (g.total_mib - profile.gpu_headroom_mib - in_use, in_use)
    return out


def _room(index: int, planned: dict[int, list[_Slot]], budgets: dict[int, tuple[int, int]]) -> int:
    return budgets[index][0] - sum(s.vram.total_mib for s in planned[index] if s.vram)


def _place_shared(shared: list[_Slot], profile: Profile, facts: HostFacts, caps: Capabilities,
                  budgets: dict[int, tuple[int, int]], planned: dict[int, list[_Slot]]) -> None:
    # Size each shared slot on the first GPU to order them (largest first); the estimate is
    # recomputed for the GPU finally chosen, whose architecture may change runtime or attention.
    for slot in shared:
        for g in facts.gpus:
            try:
                _choose_runtime(slot, profile, facts, caps, g)
            except PlanError:
                continue  # `runtime: tei` on an architecture TEI lacks: try the next GPU
            slot.gpu = g.index
            _initial_estimate(slot)
            break
    order = sorted(shared, key=lambda s: -(s.vram.total_mib if s.vram else 0))
    for slot in order:
        best: tuple[int, int] | None = None  # (room after placing, -index)
        candidates: dict[int, tuple[_Slot, int]] = {}
        errors: list[str] = []
        for g in facts.gpus:
            trial = _Slot(**{**slot.__dict__, "warnings": []})
            trial.gpu = g.index
            try:
                _choose_runtime(trial, profile, facts, caps, g)
            except PlanError as exc:
                errors.append(exc.what)
                continue
            _initial_estimate(trial)
            assert trial.vram is not None
            left = _room(g.index, planned, budgets) - trial.vram.total_mib
            candidates[g.index] = (trial, left)
            if best is None or (left, -g.index) > best:
                best = (left, -g.index)
        if best is None:
            raise PlanError(f"no GPU can run it: {'; '.join(errors)}", where=slot.where,
                            fix="use `runtime: auto` or `fallback`, or `placement: cpu`")
        chosen, _ = candidates[-best[1]]
        slot.__dict__.update(chosen.__dict__)
        planned[chosen.gpu].append(slot)  # type: ignore[index]


def _resolve_auto(index: int, members: list[_Slot], budgets: dict[int, tuple[int, int]],
                  facts: HostFacts) -> None:
    """Give the `auto` instances of one GPU equal shares of what the fixed ones leave."""
    autos = [s for s in members if s.auto]
    if not autos:
        return
    fixed = sum(_mib(s) for s in members if not s.auto)
    share = (budgets[index][0] - fixed) // len(autos)
    gpu = facts.gpu(index)
    assert gpu is not None
    for slot in autos:
        tokens = auto_max_batch_tokens(slot.info, share_mib=share, dtype=slot.dtype, flash=slot.flash,
                                       runtime=slot.vram_profile,
                                       accept_truncation=slot.dep.tuning.accept_truncation)
        if tokens is None:
            floor = min_batch_tokens(slot.info, accept_truncation=slot.dep.tuning.accept_truncation)
            need = estimate_vram(slot.info, dtype=slot.dtype, max_batch_tokens=floor, flash=slot.flash,
                                 runtime=slot.vram_profile)
            raise OvercommitError(
                f"{gpu.name}: `max_batch_tokens: auto` finds no budget for {slot.name}: its share is "
                f"{share} MiB ({budgets[index][0]} MiB budget - {fixed} MiB of fixed instances, split "
                f"{len(autos)} ways) but {floor} tokens need {need.total_mib} MiB",
                where=f"GPU {index}",
                fix=("set `accept_truncation: true` to allow a budget below the model's max input length "
                     f"{slot.info.max_input_length}, or " if not slot.dep.tuning.accept_truncation else "")
                + "move an instance to another GPU, `shared` or `cpu`, or lower gpu_headroom_mib",
            )
        slot.max_batch_tokens = tokens
        slot.vram = estimate_vram(slot.info, dtype=slot.dtype, max_batch_tokens=tokens, flash=slot.flash,
                                  runtime=slot.vram_profile)


def _describe(slot: _Slot) -> str:
    v = slot.vram
    assert v is not None
    if slot.measured is not None:
        return (f"{slot.name}: {slot.measured.total_mib} MiB measured by tune at max_batch_tokens "
                f"{v.max_batch_tokens} ({v.dtype}; the estimate was {v.total_mib} MiB)")
    return (f"{slot.name}: {v.total_mib} MiB (weights {v.weights_mib} + activations {v.activations_mib} "
            f"at max_batch_tokens {v.max_batch_tokens} + context {v.context_mib}, {v.dtype})")


def _check_budget(index: int, planned: dict[int, list[_Slot]], budgets: dict[int, tuple[int, int]],
                  facts: HostFacts, profile: Profile) -> None:
    members = planned[index]
    budget, in_use = budgets[index]
    need = sum(_mib(s) for s in members)
    if need <= budget:
        return
    gpu = facts.gpu(index)
    assert gpu is not None
    lines = [f"{gpu.name} is over-committed: its instances need {need} MiB, the budget is "
             f"{budget} MiB ({gpu.total_mib} total - {profile.gpu_headroom_mib} headroom - {in_use} in use by "
             f"other processes), {need - budget} MiB short"]
    lines += [f"    {_describe(s)}" for s in members]
    fixes = _overcommit_fixes(index, members, budget, planned, budgets, facts)
    raise OvercommitError("\n".join(lines), where=f"GPU {index}",
                          fix="one of:" + "".join(f"\n    - {fix}" for fix in fixes))


def _mib(slot: _Slot) -> int:
    """What the budget counts for an instance: the measured peak where there is one, else the estimate."""
    if slot.measured is not None:
        return slot.measured.total_mib
    return slot.vram.total_mib if slot.vram else 0


def _overcommit_fixes(index: int, members: list[_Slot], budget: int, planned: dict[int, list[_Slot]],
                      budgets: dict[int, tuple[int, int]], facts: HostFacts) -> list[str]:
    fixes: list[str] = []
    by_size = sorted((s for s in members if s.vram), key=lambda s: -_mib(s))
    total = sum(_mib(s) for s in by_size)
    for slot in by_size:
        if slot.auto:
            continue
        others = total - _mib(slot)
        floor = min_batch_tokens(slot.info, accept_truncation=slot.dep.tuning.accept_truncation)
        target = largest_fitting(slot.info, share_mib=budget - others, dtype=slot.dtype, flash=slot.flash,
                                 runtime=slot.vram_profile, floor=floor, cap=(slot.max_batch_tokens or floor) - 1)
        if target is not None:
            fixes.append(f"lower deployments[{slot.index}].tuning.max_batch_tokens ({slot.dep.instance_prefix}) "
                         f"from {slot.max_batch_tokens} to {target}")
            break
    else:
        # No single instance can give enough back: would every fixed one at its floor fit?
        at_floor = sum(
            (_mib(s) if s.auto else estimate_vram(
                s.info, dtype=s.dtype, flash=s.flash, runtime=s.vram_profile,
                max_batch_tokens=min(s.max_batch_tokens or 0, min_batch_tokens(
                    s.info, accept_truncation=s.dep.tuning.accept_truncation))).total_mib)
            for s in by_size)
        lowered = [s for s in by_size if not s.auto and (s.max_batch_tokens or 0) > min_batch_tokens(
            s.info, accept_truncation=s.dep.tuning.accept_truncation)]
        if lowered and at_floor <= budget:
            fixes.append("lower max_batch_tokens of " + ", ".join(
                f"{s.name} (deployments[{s.index}]) to "
                f"{min_batch_tokens(s.info, accept_truncation=s.dep.tuning.accept_truncation)}" for s in lowered))
    for slot in by_size:
        need = _mib(slot)
        homes = [g.index for g in facts.gpus if g.index != index and _room(g.index, planned, budgets) >= need]
        if homes:
            fixes.append(f"move {slot.name} to GPU {homes[0]} (deployments[{slot.index}].placement: "
                         f"{{gpu: {homes[0]}}} or `shared`; GPU {homes[0]} has "
                         f"{_room(homes[0], planned, budgets)} MiB free)")
            break
    if by_size:
        fixes.append(f"place {by_size[0].name} on `cpu` (deployments[{by_size[0].index}].placement)")
    if any(not s.auto for s in by_size):
        fixes.append("use `max_batch_tokens: auto` so the planner sizes batches to the GPU")
    fixes.append("lower gpu_headroom_mib")
    return fixes


# --- 5: ports ------------------------------------------------------------------------------------------


def _assign_ports(slots: list[_Slot], profile: Profile, observed: set[int], warnings: list[str]) -> None:
    taken: dict[int, _Slot] = {}
    gateway = profile.gateway.port
    for slot in slots:
        if not isinstance(slot.dep.port, int):
            continue
        port = slot.dep.port + slot.replica
        if port > MAX_PORT:
            raise PlanError(f"replica {slot.replica} would get port {port}, past {MAX_PORT}",
                            where=f"{slot.where}.port", fix="pick a lower port")
        if port == gateway:
            raise PlanError(f"port {port} of {slot.name} is the gateway's port", where=f"{slot.where}.port",
                            fix="pick another port or `port: auto`, or move gateway.port")
        if port in taken:
            other = taken[port]
            raise PlanError(
                f"port {port} is taken by both {other.name} ({other.where}) and {slot.name} ({slot.where})",
                where=f"{slot.where}.port", fix="give one of them another port or `port: auto`",
            )
        if port in observed:
            warnings.append(f"{slot.name}: port {port} is in use on the host by something else; apply will fail "
                            "until it is free")
        taken[port] = slot
        slot.port = port
    candidate = AUTO_PORT_BASE
    for slot in slots:
        if isinstance(slot.dep.port, int):
            continue
        while candidate in taken or candidate == gateway or candidate in observed:
            candidate += 1
        if candidate > MAX_PORT:
            raise PlanError("no free port left for `port: auto`", where=f"{slot.where}.port",
                            fix="give explicit ports")
        taken[candidate] = slot
        slot.port = candidate


# --- 6: the instance -----------------------------------------------------------------------------------


def runtime_settings(dep: Deployment, spec: ModelSpec, runtime: Runtime, max_batch_tokens: int) -> RuntimeSettings:
    """The runtime's settings as typed values; the runtime renders them as flags."""
    t = dep.tuning
    return RuntimeSettings(
        served_model_name=spec.id,
        max_batch_tokens=max_batch_tokens,
        max_concurrent_requests=t.max_concurrent_requests,
        max_client_batch_size=t.max_client_batch_size,
        revision=spec.revision,
        dtype=t.dtype,
        pooling=t.pooling,
        max_batch_requests=t.max_batch_requests,
        tokenization_workers=t.tokenization_workers,
        auto_truncate=t.auto_truncate,
        rerank_mode=dep.rerank_mode if get_runtime(runtime).ranks_with_embeddings else None,
        extra_args=tuple(t.extra_args),
    )


def runtime_args(dep: Deployment, spec: ModelSpec, runtime: Runtime, max_batch_tokens: int) -> tuple[str, ...]:
    """The runtime flags after --model-id/--port/--hostname, as the runtime renders them."""
    return tuple(get_runtime(runtime).render_args(runtime_settings(dep, spec, runtime, max_batch_tokens)))


def _model_source(key: str, spec: ModelSpec) -> ModelSource:
    if spec.path is None:
        return ModelSource(hub_id=spec.id, revision=spec.revision)
    if spec.path.startswith("pkg:") or not spec.path.startswith("/"):
        raise PlanError(
            f"model path {spec.path!r} is not resolved to an absolute directory",
            where=f"models.{key}.path",
            fix="load the profile with tei_manager.profiles.load_profile(), which resolves pkg: and relative paths",
        )
    return ModelSource(hub_id=spec.id, revision=spec.revision, local_path=spec.path, mount_name=key)


def _instance(slot: _Slot, profile: Profile, facts: HostFacts) -> InstancePlan:
    dep, info = slot.dep, slot.info
    tokens = slot.max_batch_tokens
    assert tokens is not None
    if tokens < info.max_input_length:
        if not dep.tuning.auto_truncate:
            raise PlanError(
                f"max_batch_tokens {tokens} is below {info.hub_id}'s max input length {info.max_input_length} "
                "and auto_truncate is false: TEI refuses to start",
                where=f"{slot.where}.tuning",
                fix=f"raise max_batch_tokens to at least {info.max_input_length} or set auto_truncate: true",
            )
        slot.warnings.append(f"{slot.name}: max_batch_tokens {tokens} < max input length {info.max_input_length}; "
                             f"longer inputs are truncated to {tokens} tokens")
    gpu = facts.gpu(slot.gpu) if slot.gpu is not None else None
    runtime = get_runtime(slot.runtime)
    # None only for a runtime that has no image for this device but an executable (process backends).
    image = runtime.image(profile, Device(gpu=gpu, cpu_arch=facts.cpu_arch)) or ""
    limits = dep.limits
    return InstancePlan(
        name=slot.name,
        profile=profile.name,
        deployment=dep.instance_prefix,
        replica=slot.replica,
        tenant=dep.tenant,
        shared=dep.shared,
        model_key=dep.model,
        model=_model_source(dep.model, slot.spec),
        served_model_name=slot.spec.id,
        task=slot.task,
        runtime=slot.runtime,
        runtime_reason=slot.reason,
        image=image,
        gpu=slot.gpu,
        gpu_uuid=gpu.uuid if gpu is not None else None,
        bind=dep.bind or profile.bind,
        host_port=slot.port,
        settings=runtime_settings(dep, slot.spec, slot.runtime, tokens),
        tasks=tuple(sorted({slot.task, slot.spec.task})),
        env=dict(dep.env),
        memory_bytes=limits.memory,
        memory_swap_bytes=limits.memory_swap,
        cpus=limits.cpus,
        shm_bytes=limits.shm_size,
        hf_cache=ModelCache.from_profile(profile.hf_cache),
        vram=slot.vram,
        health_path=runtime.health_path,
        internal_auth=profile.gateway.protect_instances,
    )

