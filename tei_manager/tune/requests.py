"""From a profile's deployment to a `TuneRequest`: its current tuning values and its search space.

What the planner knows and this module does not (the runtime `auto` resolves to, the model's max
input length, the dtype the runtime defaults to, `max_batch_tokens: auto` as a number) is passed
in by the caller, so tune never re-implements the planner.
"""

from __future__ import annotations

from collections.abc import Sequence

from tei_manager.core.models import Deployment, Profile
from tei_manager.errors import ProfileError

from .runner import TuneRequest
from .search import Value, default_space, restrict
from .trial import Schedule
from .workload import Workload, WorkloadError

FORWARD_WORKERS_FLAG = "--forward-workers"


def forward_workers_from(extra_args: Sequence[str]) -> int | None:
    """``--forward-workers N`` (or ``=N``) from a deployment's ``tuning.extra_args``."""
    for i, arg in enumerate(extra_args):
        if arg == FORWARD_WORKERS_FLAG and i + 1 < len(extra_args) and extra_args[i + 1].isdigit():
            return int(extra_args[i + 1])
        if arg.startswith(FORWARD_WORKERS_FLAG + "=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    return None


def current_settings(profile: Profile, deployment: str, *, max_batch_tokens: int | None = None) -> dict[str, Value]:
    """The deployment's tuning values as the runtime gets them (``auto`` replaced by ``max_batch_tokens``)."""
    dep = find_deployment(profile, deployment)
    tuning = dep.tuning
    tokens = tuning.max_batch_tokens if isinstance(tuning.max_batch_tokens, int) else max_batch_tokens
    if tokens is None:
        raise ValueError(f"deployment {deployment} has max_batch_tokens: auto; pass the planned number")
    out: dict[str, Value] = {
        "max_batch_tokens": tokens,
        "max_concurrent_requests": tuning.max_concurrent_requests,
        "max_client_batch_size": tuning.max_client_batch_size,
    }
    if tuning.max_batch_requests is not None:
        out["max_batch_requests"] = tuning.max_batch_requests
    if tuning.dtype is not None:
        out["dtype"] = tuning.dtype
    workers = forward_workers_from(tuning.extra_args)
    if workers is not None:
        out["forward_workers"] = workers
    return out


def find_deployment(profile: Profile, name: str) -> Deployment:
    for dep in profile.deployments:
        if dep.instance_prefix == name:
            return dep
    names = ", ".join(d.instance_prefix for d in profile.deployments)
    raise ProfileError(f"no deployment named {name!r} in profile {profile.name}", fix=f"one of: {names}")


def request_for(profile: Profile, deployment: str, *, runtime: str, workload: Workload, slo_p99_ms: float,
                on_gpu: bool, max_input_tokens: int, default_dtype: str, max_batch_tokens: int | None = None,
                schedule: Schedule | None = None, narrow: dict[str, Sequence[Value]] | None = None) -> TuneRequest:
    """A TuneRequest for one deployment; ``narrow`` restricts dimensions of the default space (short tunes)."""
    dep = find_deployment(profile, deployment)
    model = profile.models[dep.model]
    expected = "rerank" if model.task == "rerank" or dep.rerank_mode == "bi-encoder" else "embed"
    if workload.kind != expected:
        raise WorkloadError(f"deployment {deployment} serves {expected}, but the workload is {workload.kind}",
                            fix=f"give a {expected} workload")
    space = default_space(runtime, on_gpu=on_gpu, kind=workload.kind,
                          documents_per_query=workload.documents_per_query, max_input_tokens=max_input_tokens)
    if narrow:
        space = restrict(space, **narrow)
    return TuneRequest(
        deployment=deployment, model=model.id, runtime=runtime, workload=workload, space=space,
        current=current_settings(profile, deployment, max_batch_tokens=max_batch_tokens),
        default_dtype=default_dtype, slo_p99_ms=slo_p99_ms, schedule=schedule or Schedule(),
    )
