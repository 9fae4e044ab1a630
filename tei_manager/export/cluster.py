"""The Plan for a Kubernetes cluster: the same planner, fed a host described by the profile.

A cluster has no "this host": `kubernetes.gpus` (or `--gpus`) names the GPU types of its nodes,
and `placement: {gpu: N}` means a node with the N-th of them.  The planner runs unchanged on
those described facts (VRAM model, `auto` batch budgets, TEI image per compute capability and
CPU architecture); this module then checks what only a cluster cares about:

* co-location: deployments the plan puts on one GPU need `kubernetes.gpu_sharing`;
* time-slicing: any `time_slicing_replicas` pods may land on one GPU (the scheduler, not the
  plan, picks them), so the largest that many VRAM estimates on each GPU type must fit its budget;
* MIG: each GPU deployment names a slice that exists on its GPU type and holds its VRAM estimate;
* one pod template per Deployment: replicas spread over GPUs must use one GPU type.

Pure: no I/O, no Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tei_manager.core.capabilities import Capabilities
from tei_manager.core.facts import GpuFact, HostFacts
from tei_manager.core.models import KubernetesGpu, Profile
from tei_manager.core.plan import CONTAINER_PORT, InstancePlan, Plan
from tei_manager.errors import OvercommitError, PlanError

CAPABILITIES = Capabilities(
    backend="kubernetes",
    artifact="image",
    gpus=True,
    allocates_host_ports=True,
    replicas_as_one=True,
    summary="Kubernetes pods (images)",
)

_GB_IN_MIB = 1000**3 / 1024**2  # MIG sizes are decimal gigabytes; budgets here are MiB

#: MIG slices per GPU family: (family, pattern on the product label, largest GPU memory in GiB, slices).
#: Slice memory is the nominal size in decimal GB, a little below what the driver reports: conservative.
_MIG_FAMILIES: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("A30", r"A30\b", 24, ("1g.6gb", "2g.12gb", "4g.24gb")),
    ("A100 40GB", r"A100", 40, ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")),
    ("A100 80GB", r"A100", 80, ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    ("H100 80GB", r"H100", 80, ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    ("H100 NVL 94GB", r"H100", 96, ("1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb")),
    ("H200 141GB", r"H200", 144, ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")),
)


def mig_slices(product: str, memory_mib: int) -> dict[str, int] | None:
    """MIG slice name -> usable MiB for a GPU type, or None when it has no MIG (L20, L40S, T4...)."""
    for _family, pattern, max_gib, slices in _MIG_FAMILIES:
        if re.search(pattern, product, re.IGNORECASE) and memory_mib <= max_gib * 1024:
            return {s: int(float(s.split(".")[1].removesuffix("gb")) * _GB_IN_MIB) for s in slices}
    return None


def mig_resource(mig_profile: str) -> str:
    """The extended resource the device plugin's `mixed` MIG strategy advertises."""
    return f"nvidia.com/mig-{mig_profile}"


def gpu_label(name: str) -> str:
    """GPU Feature Discovery's product label: the NVML name with spaces as dashes."""
    return re.sub(r"\s+", "-", name.strip())


@dataclass(frozen=True)
class ClusterDeployment:
    """One profile deployment as one Kubernetes Deployment: the pod template comes from replica 0."""

    name: str
    template: InstancePlan
    replicas: int
    gpu: KubernetesGpu | None
    #: The extended resource of its GPU share (`nvidia.com/gpu`, `nvidia.com/mig-3g.40gb`), if any.
    gpu_resource: str | None
    #: The most pods it can have (its autoscaler's maximum, else `replicas`).
    max_pods: int = 1


@dataclass(frozen=True)
class ClusterPlan:
    plan: Plan
    deployments: tuple[ClusterDeployment, ...]
    namespace: str
    time_slicing_replicas: int | None


def dns_name(text: str) -> str:
    """A Kubernetes object name from a profile name (which may hold '.' and '_')."""
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")[:63] or "tei-manager"


def cluster_gpus(profile: Profile, gpus: Sequence[GpuFact] | None = None) -> list[KubernetesGpu]:
    """The cluster's GPU types: `--gpus` when given (NVML names become GFD labels), else the profile's."""
    if gpus is None:
        return list(profile.kubernetes.gpus)
    return [KubernetesGpu(product=gpu_label(g.name), memory=g.total_mib * 1024**2,
                          compute_capability=f"{g.compute_capability[0]}.{g.compute_capability[1]}")
            for g in sorted(gpus, key=lambda g: g.index)]


def cluster_facts(profile: Profile, gpus: Sequence[GpuFact] | None = None) -> HostFacts:
    """HostFacts describing the cluster's node types, for the planner."""
    facts = []
    for index, gpu in enumerate(cluster_gpus(profile, gpus)):
        major, minor = (int(p) for p in gpu.compute_capability.split("."))
        facts.append(GpuFact(index=index, name=gpu.product, total_mib=gpu.memory // 1024**2,
                             compute_capability=(major, minor)))
    return HostFacts(gpus=tuple(facts), cpu_arch="arm64" if profile.kubernetes.cpu_arch == "arm64" else "x86_64",
                     origin="described")


def plan_for_cluster(profile: Profile, *, source: str | None = None,
                     gpus: Sequence[GpuFact] | None = None) -> ClusterPlan:
    """The Plan for the cluster, checked for what a cluster adds (see the module docstring)."""
    from tei_manager.core.planner import plan as make_plan

    _refuse_credentials_in_env(profile)
    facts = cluster_facts(profile, gpus)
    try:
        plan = make_plan(profile, facts, source=source, capabilities=CAPABILITIES)
    except PlanError as exc:
        if "this host has no GPU" in exc.what:
            exc.fix = ("describe the cluster's GPU types in the profile's `kubernetes.gpus` "
                       "(product, memory, compute_capability) or pass --gpus")
        raise
    kube = profile.kubernetes
    namespace = kube.namespace or dns_name(profile.name)
    plan = in_cluster_addresses(plan, namespace)
    types = cluster_gpus(profile, gpus)
    _check_colocation(plan, kube.gpu_sharing)
    deployments = tuple(_deployment(profile, plan, name, types) for name in _deployment_names(plan))
    slices = None
    if kube.gpu_sharing == "time-slicing":
        slices = kube.time_slicing_replicas or max([len(g.instances) for g in plan.gpus] + [2])
        _check_time_slicing(plan, deployments, slices, profile.gpu_headroom_mib)
    return ClusterPlan(plan=plan, deployments=deployments, namespace=namespace, time_slicing_replicas=slices)


def in_cluster_addresses(plan: Plan, namespace: str) -> Plan:
    """Each instance reached through its deployment's Service (the gateway's upstream addresses):
    host ports mean nothing in a cluster; every pod listens on CONTAINER_PORT.

    No internal instance key either: on a host, any local process could reach an instance's port;
    in the cluster the NetworkPolicy admits only the gateway (and Prometheus) to instance pods."""
    instances = tuple(i.model_copy(update={"bind": f"{i.deployment}.{namespace}.svc", "host_port": CONTAINER_PORT,
                                           "internal_auth": False})
                      for i in plan.instances)
    return plan.model_copy(update={"instances": instances, "backend": CAPABILITIES.backend})


_CREDENTIAL = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)


def _refuse_credentials_in_env(profile: Profile) -> None:
    """A credential in a deployment's `env` would land in the pod spec and the gateway's ConfigMap."""
    for i, dep in enumerate(profile.deployments):
        for key in dep.env:
            if _CREDENTIAL.search(key):
                raise PlanError(
                    f"{key} in the env of {dep.instance_prefix} looks like a credential; a cluster export would "
                    "write it into the pod spec and the profile's ConfigMap",
                    where=f"deployments[{i}].env.{key}",
                    fix="remove it from the profile and name a Secret instead (kubernetes.hf_token_secret for "
                    "HF_TOKEN)",
                )


def _deployment_names(plan: Plan) -> list[str]:
    return list(dict.fromkeys(inst.deployment for inst in plan.instances))


def _check_colocation(plan: Plan, sharing: str) -> None:
    for gpu in plan.gpus:
        if len(gpu.instances) > 1 and sharing == "none":
            raise PlanError(
                f"the plan puts {', '.join(gpu.instances)} on one GPU ({gpu.name}, index {gpu.index}); "
                "in a cluster each pod gets a whole GPU unless the GPU is shared",
                where="kubernetes.gpu_sharing",
                fix="choose `gpu_sharing: time-slicing` (device plugin replicas, no memory isolation) or "
                "`gpu_sharing: mig` with a `mig_profile` per deployment, or place them on different GPUs",
            )


def _deployment(profile: Profile, plan: Plan, name: str, types: list[KubernetesGpu]) -> ClusterDeployment:
    members = [i for i in plan.instances if i.deployment == name]
    template = members[0]
    dep = next(d for d in profile.deployments if d.instance_prefix == name)
    where = f"deployments[{profile.deployments.index(dep)}] ({name})"
    gpu_types = {(types[i.gpu].product, types[i.gpu].compute_capability) for i in members if i.gpu is not None}
    if len(gpu_types) > 1:
        raise PlanError(
            f"replicas of {name} land on different GPU types ({', '.join(sorted(p for p, _ in gpu_types))}); "
            "one Kubernetes Deployment has one pod template and one image",
            where=f"{where}.placement", fix="spread the replicas over GPUs of one type, or split the deployment",
        )
    gpu = types[template.gpu] if template.gpu is not None else None
    resource: str | None = None
    if gpu is not None:
        resource = "nvidia.com/gpu"
        if profile.kubernetes.gpu_sharing == "mig":
            resource = mig_resource(_check_mig(dep.mig_profile, gpu, template, where))
    elif dep.mig_profile is not None:
        raise PlanError(f"{name} runs on CPU but names a MIG slice", where=f"{where}.mig_profile",
                        fix="remove mig_profile, or place the deployment on a GPU")
    max_pods = max(dep.replicas, dep.autoscaling.max_replicas if dep.autoscaling else 0)
    return ClusterDeployment(name=name, template=template, replicas=dep.replicas, gpu=gpu, gpu_resource=resource,
                             max_pods=max_pods)


def _check_mig(mig_profile: str | None, gpu: KubernetesGpu, inst: InstancePlan, where: str) -> str:
    slices = mig_slices(gpu.product, gpu.memory // 1024**2)
    if slices is None:
        raise PlanError(f"{gpu.product} has no MIG", where="kubernetes.gpu_sharing",
                        fix="use `gpu_sharing: time-slicing` on this GPU type (MIG: A30, A100, H100, H200)")
    if mig_profile is None:
        raise PlanError(f"{inst.deployment} needs a MIG slice with `gpu_sharing: mig`", where=f"{where}.mig_profile",
                        fix=f"choose one of {', '.join(slices)} for {gpu.product}")
    if mig_profile not in slices:
        raise PlanError(f"{gpu.product} has no MIG slice {mig_profile!r}", where=f"{where}.mig_profile",
                        fix=f"choose one of {', '.join(slices)}")
    need = inst.vram.total_mib if inst.vram else 0
    if need > slices[mig_profile]:
        bigger = [s for s, mib in slices.items() if mib >= need]
        raise OvercommitError(
            f"{inst.deployment} needs about {need} MiB of VRAM but a {mig_profile} slice holds "
            f"{slices[mig_profile]} MiB",
            where=f"{where}.mig_profile",
            fix=(f"use a larger slice ({', '.join(bigger)})" if bigger else "use a whole GPU (gpu_sharing: none)")
            + " or lower tuning.max_batch_tokens",
        )
    return mig_profile


def _check_time_slicing(plan: Plan, deployments: Sequence[ClusterDeployment], slices: int, headroom_mib: int) -> None:
    """Any `slices` pods of one GPU type may share a GPU (the scheduler picks them, not the plan):
    the largest that many must fit its budget."""
    by_type: dict[str, list[InstancePlan]] = {}
    for dep in deployments:
        if dep.gpu is not None:  # every pod it may have, autoscaled ones included
            by_type.setdefault(dep.gpu.product, []).extend([dep.template] * dep.max_pods)
    for product, members in by_type.items():
        gpu = next(d.gpu for d in deployments if d.gpu is not None and d.gpu.product == product)
        assert gpu is not None
        budget = gpu.memory // 1024**2 - headroom_mib
        worst = sorted(members, key=lambda i: i.vram.total_mib if i.vram else 0, reverse=True)[:slices]
        need = sum(i.vram.total_mib for i in worst if i.vram)
        if need > budget:
            parts = " + ".join(f"{i.deployment} {i.vram.total_mib} MiB" for i in worst if i.vram)
            raise OvercommitError(
                f"with time-slicing any {slices} pods may share one {product}; the largest ({parts} = {need} MiB) "
                f"exceed its {budget} MiB budget, and time-slicing does not isolate memory",
                where="kubernetes.time_slicing_replicas",
                fix="lower time_slicing_replicas or tuning.max_batch_tokens, use `gpu_sharing: mig`, "
                "or give the large deployments their own GPU type",
            )
