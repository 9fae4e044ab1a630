"""`--backend kubernetes`: apply a profile to a cluster, read it back, take it down.

A cluster converges on whole objects, not on one container at a time, so this backend does
not go through the orchestrator's create/start/replace steps: `converge()` (the `Converging`
ability) applies exactly what `tei-manager export kubernetes` renders (tei_manager.export: one
rendering path), then waits for the health gate and rolls back on failure:

1. read the profile's Deployments as they are now (the previous spec, for rollback);
2. server-side apply every rendered object with field manager `tei-manager`;
3. health gate: every Deployment's rollout complete (observed generation, updated and available
   replicas) and its pods ready, within the apply timeout;
4. on failure: Deployments that existed are re-applied with their previous spec, new objects
   are deleted, and ApplyError names the Deployment and why (pod waiting reasons, restarts).

State lives on the objects (labels and the `tei-manager.io/plan` / `spec-hash` annotations), never
in a side file.  `list()` reports one instance per pod (node, GPU share, restarts), which is what
`status` and the TUI show; `down` deletes by the profile's label selector and keeps the namespace
and the model cache claim.

The official `kubernetes` client is used for configuration (kubeconfig contexts, in-cluster
service accounts, auth) and transport; requests are made by path so that every kind the export
renders, custom resources included, goes through one small table.
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from tei_manager.backends.base import (
    Backend,
    BackendEntry,
    BackendOption,
    Options,
    ProgressFn,
)
from tei_manager.core.capabilities import Capabilities
from tei_manager.core.diff import Action, ObservedInstance, RunState
from tei_manager.core.facts import HostFacts
from tei_manager.core.models import Profile
from tei_manager.core.plan import InstancePlan, Plan
from tei_manager.errors import ApplyError, BackendError, HostError
from tei_manager.export.cluster import CAPABILITIES, plan_for_cluster
from tei_manager.export.kubernetes import (
    GPU_ANNOTATION,
    PLAN_ANNOTATION,
    SPEC_HASH,
    Manifest,
    profile_selector,
)

FIELD_MANAGER = "tei-manager"
POLL_S = 2.0

#: kind -> (API path prefix, plural, namespaced) for every kind the export renders.
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers", True),
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors", True),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules", True),
    "ScaledObject": ("/apis/keda.sh/v1alpha1", "scaledobjects", True),
    "Pod": ("/api/v1", "pods", True),
}
#: What `down` leaves: other profiles may share the namespace, and models are slow to download.
KEPT_BY_DOWN = ("Namespace", "PersistentVolumeClaim")
#: Not deleted by `down` itself: they go with their Deployment.
OWNED = ("Pod",)


def object_path(kind: str, name: str | None = None, namespace: str | None = None) -> str:
    prefix, plural, namespaced = KINDS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespaced and namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class KubernetesBackend(Backend):
    name = "kubernetes"
    down_note = "the namespace and the model cache claim are kept"

    def __init__(self, api: Any, namespace: str | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api  # kubernetes.client.ApiClient
        self.namespace = namespace
        self._sleep = sleep
        self._clock = clock

    # --- transport ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None,
                content_type: str | None = None, raw: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        full = path + (f"?{urlencode(query)}" if query else "")
        method, url, headers, data, post = self.api.param_serialize(
            method, full, header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(method, url, header_params=headers, body=data, post_params=post,
                                         _request_timeout=30)
            response.read()
        except Exception as exc:  # noqa: BLE001 - urllib3/connection errors: one clear message
            raise BackendError(f"the Kubernetes API does not answer ({exc})", where=self.api.configuration.host,
                               fix="check the context (--kube-context) and that the cluster is reachable") from None
        if response.status >= 400:
            try:
                reason = json.loads(response.data).get("message", "")
            except ValueError:
                reason = response.data.decode(errors="replace")[:200]
            raise ApiError(response.status, reason)
        text = response.data.decode()
        return text if raw else (json.loads(text) if text else {})

    def _get(self, kind: str, name: str, namespace: str | None) -> Manifest | None:
        try:
            result: Manifest = self.request("GET", object_path(kind, name, namespace))
            return result
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise self._error(exc, f"{kind}/{name}") from None

    def apply_object(self, manifest: Manifest) -> Manifest:
        """Server-side apply one object as field manager `tei-manager` (conflicts forced: we own it)."""
        meta = manifest["metadata"]
        path = object_path(manifest["kind"], meta["name"], meta.get("namespace"))
        try:
            result: Manifest = self.request("PATCH", path, body=manifest,
                                            query={"fieldManager": FIELD_MANAGER, "force": "true"},
                                            content_type="application/apply-patch+yaml")
            return result
        except ApiError as exc:
            raise self._error(exc, f"{manifest['kind']}/{meta['name']}") from None

    def _delete(self, kind: str, name: str, namespace: str | None) -> None:
        try:
            self.request("DELETE", object_path(kind, name, namespace), query={"propagationPolicy": "Foreground"})
        except ApiError as exc:
            if exc.status != 404:
                raise self._error(exc, f"{kind}/{name}") from None

    def _list(self, kind: str, selector: str, namespace: str | None = None) -> list[Manifest]:
        try:
            result = self.request("GET", object_path(kind, namespace=namespace or self.namespace),
                                  query={"labelSelector": selector})
        except ApiError as exc:
            if exc.status == 404 and kind in ("ServiceMonitor", "PrometheusRule", "ScaledObject"):
                return []  # the operator is not installed: nothing of this kind to list
            raise self._error(exc, kind) from None
        items: list[Manifest] = result.get("items", [])
        return items

    @staticmethod
    def _error(exc: ApiError, what: str) -> BackendError:
        fixes = {403: "the context lacks RBAC rights for this object (see docs/kubernetes.md)",
                 404: "install the operator that defines this kind (prometheus-operator, KEDA), or check the name",
                 422: "the cluster rejected the object: compare its version with docs/kubernetes.md"}
        return BackendError(f"Kubernetes refused {what}: {exc.status} {exc.reason}", where=what,
                            fix=fixes.get(exc.status, "see the message from the API server"))

    # --- converge (apply) ---------------------------------------------------------------------------
    def render(self, plan: Plan) -> list[Manifest]:
        """What `export kubernetes` writes for the plan's profile (the same function)."""
        from tei_manager.export.writer import build

        if not plan.source:
            raise BackendError("the plan has no profile file to render", where=plan.profile,
                               fix="apply a profile file: tei-manager apply PROFILE.yaml --backend kubernetes")
        return build(plan.source)[1]

    def converge(self, plan: Plan, *, timeout_s: float, on_event: Callable[[Any], None] | None = None
                 ) -> tuple[Action, ...]:
        from tei_manager.orchestrator import ActionsPlanned, InstanceStep, RollingBack

        emit = on_event or (lambda _event: None)
        manifests = self.render(plan)
        deployments = [m for m in manifests if m["kind"] == "Deployment"]
        previous = {m["metadata"]["name"]: self._get("Deployment", m["metadata"]["name"],
                                                     m["metadata"]["namespace"]) for m in deployments}
        existed = {(m["kind"], m["metadata"]["name"]) for m in manifests
                   if m["kind"] != "Deployment" and self._get(m["kind"], m["metadata"]["name"],
                                                                m["metadata"].get("namespace")) is not None}
        actions = tuple(self._action(m, previous[m["metadata"]["name"]], plan) for m in deployments)
        emit(ActionsPlanned(plan.profile, actions))
        try:
            for manifest in manifests:
                self.apply_object(manifest)
                emit(InstanceStep(manifest["metadata"]["name"], "applied", manifest["kind"]))
            started = self._clock()
            for manifest in deployments:
                self._wait_rolled_out(manifest, started, timeout_s, emit)
                emit(InstanceStep(manifest["metadata"]["name"], "healthy", "rollout complete, pods ready"))
        except BackendError as exc:
            emit(RollingBack(exc.what))
            self._roll_back(manifests, previous, existed)
            raise ApplyError(exc.what, where=exc.where, fix=exc.fix) from None
        # Objects of this profile that the profile no longer renders (a removed deployment).
        wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
        for kind in ("ScaledObject", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Deployment"):
            for obj in self._list(kind, profile_selector(plan.profile)):
                if (kind, obj["metadata"]["name"]) not in wanted:
                    self._delete(kind, obj["metadata"]["name"], obj["metadata"].get("namespace"))
        return actions

    @staticmethod
    def _action(manifest: Manifest, before: Manifest | None, plan: Plan) -> Action:
        name = manifest["metadata"]["name"]
        desired = next((i for i in plan.instances if i.deployment == name), None)
        if before is None:
            return Action("create", name, desired=desired)
        same = (before["metadata"].get("annotations") or {}).get(SPEC_HASH) == \
            (manifest["metadata"].get("annotations") or {}).get(SPEC_HASH)
        return Action("keep" if same else "replace", name, desired=desired)

    def _wait_rolled_out(self, manifest: Manifest, started: float, timeout_s: float,
                         emit: Callable[[Any], None]) -> None:
        from tei_manager.orchestrator import WaitingHealthy

        meta = manifest["metadata"]
        while True:
            current = self._get("Deployment", meta["name"], meta["namespace"]) or {}
            why = rollout_pending(current)
            if why is None:
                return
            elapsed = self._clock() - started
            emit(WaitingHealthy(meta["name"], elapsed, timeout_s, probe="rollout", last_log=why))
            if elapsed >= timeout_s:
                detail = self._pod_problems(current)
                raise BackendError(f"Deployment {meta['name']} did not become ready: {why}"
                                   + (f"; {detail}" if detail else ""), where=meta["name"],
                                   fix="see `tei-manager logs` and `kubectl describe pod`; raise --timeout for "
                                   "a first model download")
            self._sleep(POLL_S)

    def _pod_problems(self, deployment: Manifest) -> str:
        selector = ",".join(f"{k}={v}" for k, v in deployment.get("spec", {}).get("selector", {})
                            .get("matchLabels", {}).items())
        problems = []
        for pod in self._list("Pod", selector, deployment["metadata"]["namespace"]) if selector else []:
            for cs in pod.get("status", {}).get("containerStatuses", []) or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason"):
                    problems.append(f"{pod['metadata']['name']}: {waiting['reason']}")
                if cs.get("restartCount"):
                    problems.append(f"{pod['metadata']['name']}: {cs['restartCount']} restarts")
            for cond in pod.get("status", {}).get("conditions", []) or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    problems.append(f"{pod['metadata']['name']}: unschedulable ({cond.get('message', '')})")
        return "; ".join(problems)

    def _roll_back(self, manifests: list[Manifest], previous: dict[str, Manifest | None],
                   existed: set[tuple[str, str]]) -> None:
        for manifest in reversed(manifests):
            kind, meta = manifest["kind"], manifest["metadata"]
            if kind == "Deployment":
                before = previous.get(meta["name"])
                if before is None:
                    self._delete(kind, meta["name"], meta["namespace"])
                else:
                    self.apply_object(previous_spec(before))
            elif (kind, meta["name"]) not in existed and kind not in KEPT_BY_DOWN:
                self._delete(kind, meta["name"], meta.get("namespace"))

    # --- read back ----------------------------------------------------------------------------------
    def list(self, profile: str | None = None) -> list[ObservedInstance]:
        selector = profile_selector(profile) if profile else "app.kubernetes.io/managed-by=tei-manager"
        selector += ",app.kubernetes.io/component=instance"
        plans: dict[str, tuple[InstancePlan | None, str]] = {}
        for dep in self._list("Deployment", selector):
            annotations = dep["metadata"].get("annotations") or {}
            plans[dep["metadata"]["name"]] = (_plan(annotations.get(PLAN_ANNOTATION)),
                                              annotations.get(GPU_ANNOTATION, "cpu"))
        found = []
        for pod in self._list("Pod", selector):
            meta, status = pod["metadata"], pod.get("status", {})
            labels = meta.get("labels") or {}
            plan, gpu = plans.get(labels.get("app.kubernetes.io/name", ""), (None, "cpu"))
            statuses = status.get("containerStatuses") or []
            found.append(ObservedInstance(
                name=meta["name"],
                profile=labels.get("tei-manager.io/profile", "?"),
                backend=self.name,
                handle=f"{meta['namespace']}/{meta['name']}",
                state=pod_state(pod),
                spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH),
                plan=plan,
                # Where it landed: the node and its GPU share (shown as the address column).
                bind=f"{pod.get('spec', {}).get('nodeName') or 'unscheduled'} [{gpu}]",
                port=None,
                started_at=_time(status.get("startTime")),
                engine_restarts=sum(int(cs.get("restartCount", 0)) for cs in statuses),
                error=next((((cs.get("state") or {}).get("waiting") or {}).get("reason") for cs in statuses
                            if (cs.get("state") or {}).get("waiting")), None),
            ))
        return found

    def refresh(self, obs: ObservedInstance) -> ObservedInstance | None:
        return next((o for o in self.list(obs.profile) if o.handle == obs.handle), None)

    def logs(self, obs: ObservedInstance, *, tail: int = 100, follow: bool = False) -> Iterator[str]:
        namespace, pod = obs.handle.split("/", 1)
        query = {"tailLines": str(tail)} if tail >= 0 else {}
        try:
            text = self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{quote(pod)}/log", query=query, raw=True)
        except ApiError as exc:
            raise self._error(exc, f"pod {pod}") from None
        yield from str(text).splitlines()

    # --- down ---------------------------------------------------------------------------------------
    def remove(self, obs: ObservedInstance) -> None:
        """Delete every object of the instance's profile by label selector (idempotent)."""
        self.delete_profile(obs.profile)

    def delete_profile(self, profile: str) -> builtins.list[str]:
        deleted: builtins.list[str] = []
        for kind in KINDS:
            if kind in KEPT_BY_DOWN or kind in OWNED:
                continue
            for obj in self._list(kind, profile_selector(profile)):
                self._delete(kind, obj["metadata"]["name"], obj["metadata"].get("namespace"))
                deleted.append(f"{kind}/{obj['metadata']['name']}")
        return deleted

    def stop(self, obs: ObservedInstance, *, timeout_s: float = 10.0) -> ObservedInstance:
        return obs  # pods stop when their Deployment is deleted (graceful, with the rendered grace period)

    # --- steps the orchestrator uses for other engines ------------------------------------------------
    def prepare(self, instance: InstancePlan, on_progress: ProgressFn | None = None) -> None:
        """Nodes pull images themselves."""

    def _whole_profile(self, what: str) -> BackendError:
        return BackendError(f"the kubernetes backend does not {what} single instances", where=self.name,
                            fix="use `tei-manager apply PROFILE --backend kubernetes` (the whole profile)")

    def create(self, instance: InstancePlan, *, slot: str = "") -> ObservedInstance:
        raise self._whole_profile("create")

    def start(self, obs: ObservedInstance) -> ObservedInstance:
        raise self._whole_profile("start")

    def close(self) -> None:
        self.api.close()


# --- pure helpers ---------------------------------------------------------------------------------------


def rollout_pending(deployment: Manifest) -> str | None:
    """Why a Deployment's rollout is not complete (None when it is), as `kubectl rollout status` sees it."""
    if not deployment:
        return "it does not exist"
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0):
        return "the controller has not seen the new spec yet"
    want = spec.get("replicas", 1)
    updated, ready = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    if updated < want:
        return f"{updated} of {want} pods updated"
    if status.get("replicas", 0) > updated:
        return f"{status['replicas'] - updated} old pods still terminating"
    if ready < want:
        return f"{ready} of {want} pods ready"
    return None


def previous_spec(live: Manifest) -> Manifest:
    """A live object as an apply body again: what the server adds (status, uid, managedFields...) removed."""
    meta = live["metadata"]
    keep = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
    annotations = {k: v for k, v in (keep.get("annotations") or {}).items()
                   if not k.startswith("deployment.kubernetes.io/")}
    if annotations:
        keep["annotations"] = annotations
    else:
        keep.pop("annotations", None)
    return {"apiVersion": live.get("apiVersion", "apps/v1"), "kind": live.get("kind", "Deployment"),
            "metadata": keep, "spec": live["spec"]}


def pod_state(pod: Manifest) -> RunState:
    status = pod.get("status", {})
    phase = status.get("phase")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if phase == "Running":
        return "running" if ready else "restarting"
    if phase == "Pending":
        return "created"
    if phase in ("Succeeded", "Failed"):
        return "exited"
    return "unknown"


def _plan(raw: str | None) -> InstancePlan | None:
    if not raw:
        return None
    try:
        return InstancePlan.model_validate_json(raw)
    except ValueError:
        return None


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- registry entry -------------------------------------------------------------------------------------


def open_backend(options: Options) -> KubernetesBackend:
    """A client for the kubeconfig context (or the pod's service account inside a cluster)."""
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise HostError("the kubernetes backend needs the `kubernetes` package", where="--backend kubernetes",
                        fix="pip install 'tei-manager[kubernetes]'") from exc
    context = options.get("kube_context")
    try:
        if context is None and _in_cluster():
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            configuration = client.Configuration.get_default_copy()
        else:
            configuration = client.Configuration()
            # KUBECONFIG read now, not when the client was imported (it may have changed since).
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), context=context,  # type: ignore[no-untyped-call]
                                    client_configuration=configuration)
    except Exception as exc:  # noqa: BLE001 - missing kubeconfig, unknown context: one clear message
        raise HostError(f"no Kubernetes cluster configured ({exc})", where="--kube-context",
                        fix="set KUBECONFIG or ~/.kube/config, or name a context with --kube-context") from None
    return KubernetesBackend(client.ApiClient(configuration), options.get("kube_namespace"))


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def capabilities(_facts: HostFacts) -> Capabilities:
    return CAPABILITIES


def plan(profile: Profile, source: str | None) -> Plan:
    """The cluster plan: the profile's `kubernetes.gpus`, not this host, decide GPUs and images."""
    return plan_for_cluster(profile, source=source).plan


ENTRY = BackendEntry(
    name="kubernetes",
    help="A Kubernetes cluster (server-side apply; see docs/kubernetes.md).",
    capabilities=capabilities,
    open=open_backend,
    options=(
        BackendOption("kube_context", "--kube-context", "kubeconfig context (kubernetes backend).",
                      envvar="TEI_MANAGER_KUBE_CONTEXT"),
        BackendOption("kube_namespace", "--namespace", "Namespace to read (kubernetes backend); default all "
                      "the context may list.", envvar="TEI_MANAGER_NAMESPACE"),
    ),
    plan=plan,
    auto=False,  # only when named: `auto` never reaches a cluster from a kubeconfig lying around
)
