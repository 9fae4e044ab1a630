"""A stand-in Kubernetes API server on loopback, for the backend tests.

A real cluster cannot run on these machines, so the backend talks through the real `kubernetes`
client and real HTTP to this stub, which answers the few calls the backend makes with the shapes
the API server uses: server-side apply (PATCH application/apply-patch+yaml) stores the object and
bumps `generation`, GET/DELETE by path, lists by label selector, pod logs.  Deployments roll out
instantly unless a test marks them broken (then their pods wait in CrashLoopBackOff).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tei_manager.backends.kubernetes import KINDS

_BY_PLURAL = {plural: kind for kind, (_prefix, plural, _ns) in KINDS.items()}


class FakeApiServer:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name) -> object
        self.broken: set[str] = set()  # Deployment names whose pods never become ready
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self.lock = threading.Lock()

    # --- the API ---------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any, ctype: str) -> tuple[int, Any]:
        self.requests.append((method, path, ctype))
        parts = path.strip("/").split("/")
        if parts[-1] == "log":
            pod = parts[-2]
            return 200, f"{pod} line 1\n{pod} line 2\n"
        ns = parts[parts.index("namespaces") + 1] if "namespaces" in parts and parts[-1] != "namespaces" \
            and parts.index("namespaces") + 1 < len(parts) and parts[parts.index("namespaces") + 1] not in _BY_PLURAL \
            else ""
        plural_index = max(i for i, p in enumerate(parts) if p in _BY_PLURAL)
        kind = _BY_PLURAL[parts[plural_index]]
        name = parts[plural_index + 1] if plural_index + 1 < len(parts) else None
        if kind == "Namespace":
            ns = ""
        key = (kind, ns, name or "")
        with self.lock:
            if method == "PATCH":
                assert ctype == "application/apply-patch+yaml" and query.get("fieldManager") == "tei-manager"
                old = self.objects.get(key)
                obj = json.loads(json.dumps(body))
                generation = (old or {}).get("metadata", {}).get("generation", 0)
                if old is None or old.get("spec") != obj.get("spec"):
                    generation += 1
                obj["metadata"]["generation"] = generation
                self.objects[key] = obj
                if kind == "Deployment":
                    self._roll_out(obj)
                return 200, obj
            if method == "GET" and name:
                return (200, self.objects[key]) if key in self.objects else (404, {"message": "not found"})
            if method == "GET":
                return 200, {"items": self._select(kind, ns, query.get("labelSelector", ""))}
            if method == "DELETE":
                if key not in self.objects:
                    return 404, {"message": "not found"}
                gone = self.objects.pop(key)
                if kind == "Deployment":
                    for pod_key in [k for k in self.objects if k[0] == "Pod" and k[2].startswith(name + "-")]:
                        del self.objects[pod_key]
                return 200, gone
        return 405, {"message": "unsupported"}

    def _select(self, kind: str, ns: str, selector: str) -> list[dict[str, Any]]:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        return [o for (k, n, _), o in sorted(self.objects.items())
                if k == kind and (not ns or n == ns)
                and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in wanted.items())]

    def _roll_out(self, dep: dict[str, Any]) -> None:
        """The controller: replace the pods; ready at once unless the Deployment is broken."""
        meta, spec = dep["metadata"], dep["spec"]
        replicas = spec.get("replicas", 1)
        broken = meta["name"] in self.broken
        for key in [k for k in self.objects if k[0] == "Pod" and k[2].startswith(meta["name"] + "-")]:
            del self.objects[key]
        template = spec["template"]["metadata"]
        for i in range(replicas):
            pod_name = f"{meta['name']}-{meta['generation']}-{i}"
            self.objects[("Pod", meta["namespace"], pod_name)] = {
                "metadata": {"name": pod_name, "namespace": meta["namespace"], "labels": template["labels"],
                             "annotations": template.get("annotations", {})},
                "spec": {"nodeName": f"gpu-node-{i}"},
                "status": {
                    "phase": "Running", "startTime": "2026-11-30T12:00:00Z",
                    "conditions": [{"type": "Ready", "status": "False" if broken else "True"}],
                    "containerStatuses": [{"restartCount": 3 if broken else 0,
                                           "state": {"waiting": {"reason": "CrashLoopBackOff"}} if broken
                                           else {"running": {}}}],
                },
            }
        dep["status"] = {"observedGeneration": meta["generation"], "replicas": replicas,
                         "updatedReplicas": replicas, "availableReplicas": 0 if broken else replicas}


@contextmanager
def running(server: FakeApiServer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload = server.handle(self.command, url.path, query, body,
                                            self.headers.get("Content-Type", ""))
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
