"""Container health check of the fallback worker or the tei-manager gateway: exit 0 when GET /health
answers 200.

The port is the one the server was started with (`--port N` / `--port=N` on the command line of
`tei-fallback-worker` or `tei-manager serve`), else the default of what runs: the PORT environment
variable or 80 (TEI's default inside containers) for the worker, 8080 (`gateway.port`'s default)
for the gateway. So the check stays right whatever port the manager or the manifests pass.
"""

import os
import sys
import urllib.request
from pathlib import Path


def _is_worker(args: list[str]) -> bool:
    return any("tei-fallback-worker" in a or "fallback_worker" in a for a in args[:3])


def _is_gateway(args: list[str]) -> bool:
    return any(a.endswith("tei-manager") or "tei_manager" in a for a in args[:3]) and "serve" in args


def server_port() -> str:
    for cmdline in sorted(Path("/proc").glob("[0-9]*/cmdline")):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        worker = _is_worker(args)
        if not worker and not _is_gateway(args):
            continue
        for i, arg in enumerate(args):
            if arg == "--port" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--port="):
                return arg.split("=", 1)[1]
        return os.environ.get("PORT", "80") if worker else "8080"
    return os.environ.get("PORT", "80")


def main() -> int:
    url = f"http://127.0.0.1:{server_port()}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
