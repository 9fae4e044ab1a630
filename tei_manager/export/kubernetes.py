"""Kubernetes objects from a cluster Plan: pure functions, one list of manifest dicts.

`render(profile, cluster, profile_text=..., alert_groups=...)` is the only rendering path:
`tei-manager export kubernetes` writes its result to files (tei_manager.export.writer) and the
Kubernetes backend applies exactly the same list (tei_manager.backends.kubernetes).

Per profile deployment: a Deployment, a Service and a PodDisruptionBudget (plus a KEDA
ScaledObject or an HPA when it autoscales).  Shared: the model cache claim, the gateway
(Deployment, Service, PDB, ConfigMap with the profile, ServiceAccount), a
NetworkPolicy that lets only the gateway and Prometheus reach the instances, a ServiceMonitor
per component and a PrometheusRule with the alerts of deploy/prometheus/alerts.yml.

Credentials are referenced by Secret name and key, never rendered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from tei_manager.backends.labels import redacted_plan
from tei_manager.core.models import KubernetesSettings, Profile
from tei_manager.core.plan import (
    CONTAINER_HF_CACHE,
    CONTAINER_MODEL_DIR,
    CONTAINER_PORT,
    InstancePlan,
)
from tei_manager.export.cluster import ClusterDeployment, ClusterPlan, dns_name
from tei_manager.runtimes.registry import get_runtime

Manifest = dict[str, Any]

GROUP = "tei-manager.io"
PROFILE_LABEL = f"{GROUP}/profile"
DEPLOYMENT_LABEL = f"{GROUP}/deployment"
SPEC_HASH = f"{GROUP}/spec-hash"
PLAN_ANNOTATION = f"{GROUP}/plan"
GPU_ANNOTATION = f"{GROUP}/gpu"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"

#: TEI serves Prometheus metrics on their own port; the fallback worker on its HTTP port.
TEI_METRICS_PORT = 9000
GATEWAY_PORT = 8080
PROFILE_DIR = "/etc/tei-manager"
FILE_SECRETS_DIR = "/run/secrets"
#: Seconds a terminating pod keeps serving while Services drop its endpoint.
ENDPOINT_DELAY_S = 5


def profile_selector(profile: str) -> str:
    """The label selector of every object of a profile (`down` deletes by it)."""
    return f"{PROFILE_LABEL}={profile},{MANAGED_BY}=tei-manager"


def _labels(profile: Profile, component: str, name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": dns_name(profile.name),
        COMPONENT: component,
        MANAGED_BY: "tei-manager",
        PROFILE_LABEL: profile.name,
    }


def _selector(profile: Profile, component: str, name: str) -> dict[str, str]:
    # Immutable on a Deployment: only labels that never change with the spec.
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": dns_name(profile.name), COMPONENT: component}


def _meta(name: str, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
          ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def quantity_bytes(value: int) -> str:
    """Bytes as a Kubernetes quantity: 8Gi, 512Mi, or plain bytes."""
    for unit, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def quantity_cpus(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


# --- instances --------------------------------------------------------------------------------------


def _node_affinity(dep: ClusterDeployment, kube: KubernetesSettings) -> dict[str, Any]:
    expressions: list[dict[str, Any]] = [{"key": "kubernetes.io/arch", "operator": "In", "values": [kube.cpu_arch]}]
    if dep.gpu is not None:
        major, minor = dep.gpu.compute_capability.split(".")
        # The image is built for this compute capability: GPU Feature Discovery's labels pin the node type.
        expressions += [
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": [dep.gpu.product]},
            {"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": [major]},
            {"key": "nvidia.com/gpu.compute.minor", "operator": "In", "values": [minor]},
        ]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}


def _resources(inst: InstancePlan, dep: ClusterDeployment) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": quantity_cpus(inst.cpus) if inst.cpus else "1"}
    limits: dict[str, str] = {}
    if inst.cpus:
        limits["cpu"] = quantity_cpus(inst.cpus)
    if inst.memory_bytes:
        requests["memory"] = limits["memory"] = quantity_bytes(inst.memory_bytes)
    if dep.gpu_resource:
        limits[dep.gpu_resource] = "1"
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def _cache_volume(kube: KubernetesSettings) -> dict[str, Any]:
    cache = kube.model_cache
    if cache.kind == "host-path":
        return {"name": "model-cache", "hostPath": {"path": cache.path, "type": "DirectoryOrCreate"}}
    claim = cache.claim if cache.kind == "existing-claim" else "model-cache"
    return {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim}}


def _probe(path: str, *, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _instance_container(inst: InstancePlan, dep: ClusterDeployment, kube: KubernetesSettings) -> dict[str, Any]:
    runtime = get_runtime(inst.runtime)
    env = {**inst.env, **runtime.render_env(inst, in_container=True),
           # The root filesystem is read-only: caches and home go to the mounted cache and /tmp.
           "HF_HOME": CONTAINER_HF_CACHE, "HOME": "/tmp"}
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    if kube.hf_token_secret:
        env_list.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": kube.hf_token_secret,
                                                                            "key": "HF_TOKEN"}}})
    ports: list[dict[str, Any]] = [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}]
    if inst.runtime == "tei":
        ports.append({"name": "metrics", "containerPort": TEI_METRICS_PORT, "protocol": "TCP"})
    mounts: list[dict[str, Any]] = [{"name": "model-cache", "mountPath": CONTAINER_HF_CACHE},
                                    {"name": "tmp", "mountPath": "/tmp"}]
    if inst.shm_bytes:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if inst.model.local_path is not None:
        mounts.append({"name": "model", "mountPath": f"{CONTAINER_MODEL_DIR}/{inst.model.mount_name}",
                       "readOnly": True})
    startup_failures = max(1, kube.startup_seconds // 10)
    return {
        "name": inst.runtime,
        "image": inst.image,
        "args": inst.command(in_container=True),
        "env": env_list,
        "ports": ports,
        "resources": _resources(inst, dep),
        "volumeMounts": mounts,
        # Long enough for a first model download; readiness and liveness take over afterwards.
        "startupProbe": _probe(inst.health_path, period=10, timeout=5, failures=startup_failures),
        "readinessProbe": _probe(inst.health_path, period=10, timeout=5, failures=3),
        "livenessProbe": _probe(inst.health_path, period=20, timeout=10, failures=3),
        # Keep serving while the Service drops the endpoint, then SIGTERM lets the batch in flight finish.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(ENDPOINT_DELAY_S)]}}},
        "securityContext": _container_security(),
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def _pod_security(kube: KubernetesSettings) -> dict[str, Any]:
    uid = kube.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def _instance_volumes(inst: InstancePlan, kube: KubernetesSettings) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [_cache_volume(kube), {"name": "tmp", "emptyDir": {}}]
    if inst.shm_bytes:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity_bytes(inst.shm_bytes)}})
    if inst.model.local_path is not None:
        # A directory on the node: it must exist on every node the pod may land on.
        volumes.append({"name": "model", "hostPath": {"path": inst.model.local_path, "type": "Directory"}})
    return volumes


def _spread(selector: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": dict(selector)}}]


def _instance_objects(profile: Profile, cluster: ClusterPlan, dep: ClusterDeployment) -> list[Manifest]:
    kube, ns, inst = profile.kubernetes, cluster.namespace, dep.template
    labels = {**_labels(profile, "instance", dep.name), DEPLOYMENT_LABEL: dep.name,
              f"{GROUP}/tenant": dns_name(inst.tenant), f"{GROUP}/runtime": inst.runtime}
    selector = _selector(profile, "instance", dep.name)
    state = {SPEC_HASH: inst.spec_hash,
             PLAN_ANNOTATION: json.dumps(redacted_plan(inst), sort_keys=True, separators=(",", ":"))}
    if dep.gpu is not None:
        state[GPU_ANNOTATION] = f"{dep.gpu.product} ({dep.gpu_resource})"
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(kube),
        "terminationGracePeriodSeconds": ENDPOINT_DELAY_S + kube.drain_seconds,
        "affinity": _node_affinity(dep, kube),
        "containers": [_instance_container(inst, dep, kube)],
        "volumes": _instance_volumes(inst, kube),
    }
    if dep.gpu is not None:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if dep.replicas > 1 or _autoscaling(profile, dep.name) is not None:
        pod_spec["topologySpreadConstraints"] = _spread(selector)
    scaling = _autoscaling(profile, dep.name)
    # An autoscaled Deployment leaves `replicas` to its autoscaler (applying it would fight the scaler).
    spec: dict[str, Any] = {} if scaling is not None else {"replicas": dep.replicas}
    spec |= {
        "selector": {"matchLabels": selector},
        # A new pod is ready before an old one goes: needs room for one more pod (and its GPU share).
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "revisionHistoryLimit": 5,
        "template": {"metadata": {"labels": labels, "annotations": {SPEC_HASH: inst.spec_hash}}, "spec": pod_spec},
    }
    ports = [{"name": "http", "port": CONTAINER_PORT, "targetPort": "http", "protocol": "TCP"}]
    if inst.runtime == "tei":
        ports.append({"name": "metrics", "port": TEI_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"})
    objects: list[Manifest] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(dep.name, ns, labels, state), "spec": spec},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(dep.name, ns, labels),
         "spec": {"type": "ClusterIP", "selector": selector, "ports": ports}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(dep.name, ns, labels),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}}},
    ]
    if scaling is not None:
        objects.append(_scaler(profile, cluster, dep.name, labels, *scaling))
    return objects


def _autoscaling(profile: Profile, name: str) -> tuple[int, int, int] | None:
    dep = next(d for d in profile.deployments if d.instance_prefix == name)
    if dep.autoscaling is None:
        return None
    return dep.autoscaling.min_replicas, dep.autoscaling.max_replicas, dep.autoscaling.queue_size


def _scaler(profile: Profile, cluster: ClusterPlan, name: str, labels: Mapping[str, str],
            low: int, high: int, queue: int) -> Manifest:
    kube, ns = profile.kubernetes, cluster.namespace
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    if kube.autoscaler == "keda":
        query = f'sum(te_queue_size{{namespace="{ns}",service="{name}"}})'
        return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(name, ns, labels),
                "spec": {"scaleTargetRef": target, "minReplicaCount": low, "maxReplicaCount": high,
                         "triggers": [{"type": "prometheus", "metadata": {
                             "serverAddress": kube.prometheus_url, "query": query, "threshold": str(queue)}}]}}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(name, ns, labels),
            "spec": {"scaleTargetRef": target, "minReplicas": low, "maxReplicas": high,
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": "te_queue_size"},
                         "target": {"type": "AverageValue", "averageValue": str(queue)}}}]}}


# --- the gateway ------------------------------------------------------------------------------------


def _key_refs(profile: Profile) -> tuple[list[str], list[str]]:
    """Env names and file paths of every tenant key reference."""
    envs: list[str] = []
    files: list[str] = []
    for tenant in profile.tenants.values():
        for ref in tenant.api_keys:
            if ref.env:
                envs.append(ref.env)
            elif ref.file:
                files.append(ref.file)
    return sorted(set(envs)), sorted(set(files))


def key_secret_name(profile: Profile) -> str:
    return profile.kubernetes.tenant_keys_secret or f"{dns_name(profile.name)}-tenant-keys"


def _gateway_objects(profile: Profile, cluster: ClusterPlan, profile_text: str) -> list[Manifest]:
    kube, ns = profile.kubernetes, cluster.namespace
    name = f"{dns_name(profile.name)}-gateway"
    labels = _labels(profile, "gateway", name)
    selector = _selector(profile, "gateway", name)
    secret = key_secret_name(profile)
    envs, files = _key_refs(profile)
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    env += [{"name": e, "valueFrom": {"secretKeyRef": {"name": secret, "key": e}}} for e in envs]
    mounts: list[dict[str, Any]] = [{"name": "profile", "mountPath": PROFILE_DIR, "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "profile", "configMap": {"name": f"{name}-profile"}},
                                     {"name": "tmp", "emptyDir": {}}]
    for i, path in enumerate(files):
        # One key of the Secret per file reference, named after the file, mounted at the path it names.
        mounts.append({"name": f"key-{i}", "mountPath": path, "subPath": os.path.basename(path), "readOnly": True})
        volumes.append({"name": f"key-{i}", "secret": {"secretName": secret,
                                                       "items": [{"key": os.path.basename(path),
                                                                  "path": os.path.basename(path)}]}})
    container = {
        "name": "gateway",
        "image": kube.gateway_image,
        "command": ["tei-manager"],
        "args": ["serve", f"{PROFILE_DIR}/profile.yaml", "--backend", "kubernetes",
                 "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)],
        "env": env,
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": mounts,
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 20, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(ENDPOINT_DELAY_S)]}}},
        "securityContext": _container_security(),
    }
    pod_spec = {
        "serviceAccountName": name,
        "securityContext": _pod_security(kube),
        "terminationGracePeriodSeconds": ENDPOINT_DELAY_S + int(profile.gateway.upstream_timeout_s),
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": [kube.cpu_arch]}]}]}}},
        "topologySpreadConstraints": _spread(selector),
        "containers": [container],
        "volumes": volumes,
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-profile", ns, labels),
         "data": {"profile.yaml": profile_text}},
        # Its own identity with no rights: `serve --backend kubernetes` plans from the profile alone,
        # the client only needs the mounted service account to start.
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, ns, labels)},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, ns, labels),
         "spec": {"replicas": kube.gateway_replicas, "selector": {"matchLabels": selector},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                  "template": {"metadata": {"labels": labels}, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns, labels),
         "spec": {"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "http", "port": GATEWAY_PORT, "targetPort": "http", "protocol": "TCP"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name, ns, labels),
         "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}}},
    ]


# --- shared objects ---------------------------------------------------------------------------------


def _network_policy(profile: Profile, cluster: ClusterPlan) -> Manifest:
    """Instances accept traffic only from this profile's gateway and from Prometheus."""
    instance = dns_name(profile.name)
    ports = [{"protocol": "TCP", "port": "http"}]
    if any(d.template.runtime == "tei" for d in cluster.deployments):
        ports.append({"protocol": "TCP", "port": "metrics"})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(f"{instance}-instances", cluster.namespace, _labels(profile, "instance", "instances")),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/instance": instance, COMPONENT: "instance"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": instance,
                                                           COMPONENT: "gateway"}}}],
                 "ports": [{"protocol": "TCP", "port": "http"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": profile.kubernetes.monitoring_namespace}}}],
                 "ports": ports},
            ],
        },
    }


def _monitoring(profile: Profile, cluster: ClusterPlan, alert_groups: Sequence[Mapping[str, Any]]) -> list[Manifest]:
    ns, instance = cluster.namespace, dns_name(profile.name)
    objects: list[Manifest] = []
    endpoints = {"tei": "metrics", "fallback": "http"}
    for runtime in sorted({d.template.runtime for d in cluster.deployments}):
        objects.append({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta(f"{instance}-{runtime}", ns, _labels(profile, "instance", f"{instance}-{runtime}")),
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": instance, COMPONENT: "instance",
                                                  f"{GROUP}/runtime": runtime}},
                     "endpoints": [{"port": endpoints.get(runtime, "http"), "path": "/metrics", "interval": "15s"}]},
        })
    objects.append({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": _meta(f"{instance}-gateway", ns, _labels(profile, "gateway", f"{instance}-gateway")),
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": instance, COMPONENT: "gateway"}},
                 "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}]},
    })
    if alert_groups:
        objects.append({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _meta(instance, ns, _labels(profile, "monitoring", f"{instance}-alerts")),
            "spec": {"groups": [dict(g) for g in alert_groups]},
        })
    return objects


def _cache_claim(profile: Profile, namespace: str) -> list[Manifest]:
    cache = profile.kubernetes.model_cache
    if cache.kind != "pvc":
        return []
    spec: dict[str, Any] = {"accessModes": [cache.access_mode],
                            "resources": {"requests": {"storage": quantity_bytes(cache.size)}}}
    if cache.storage_class:
        spec["storageClassName"] = cache.storage_class
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": _meta("model-cache", namespace, _labels(profile, "cache", "model-cache")), "spec": spec}]


def render(profile: Profile, cluster: ClusterPlan, *, profile_text: str,
           alert_groups: Sequence[Mapping[str, Any]] = ()) -> list[Manifest]:
    """Every object of the profile, in apply order (namespace and claims before their users)."""
    ns = cluster.namespace
    objects: list[Manifest] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": ns, "labels": _labels(profile, "namespace", ns)}},
        *_cache_claim(profile, ns),
    ]
    for dep in cluster.deployments:
        objects += _instance_objects(profile, cluster, dep)
    objects += _gateway_objects(profile, cluster, profile_text)
    objects.append(_network_policy(profile, cluster))
    if profile.kubernetes.monitoring:
        objects += _monitoring(profile, cluster, alert_groups)
    return objects
