"""Container health check of the fallback worker: exit 0 when GET /health answers 200.

The port is the one the worker was started with (`--port N` / `--port=N` on its command line,
else the PORT environment variable, else 80, TEI's default inside containers), so the check
stays right whatever port the manager passes.
"""

import os
import sys
import urllib.request
from pathlib import Path


def worker_port() -> str:
    for cmdline in sorted(Path("/proc").glob("[0-9]*/cmdline")):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any("tei-fallback-worker" in a or "fallback_worker" in a for a in args[:3]):
            continue
        for i, arg in enumerate(args):
            if arg == "--port" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--port="):
                return arg.split("=", 1)[1]
    return os.environ.get("PORT", "80")


def main() -> int:
    url = f"http://127.0.0.1:{worker_port()}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
