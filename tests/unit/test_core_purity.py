"""The planner is pure: importing it loads none of the I/O or heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("docker", "httpx", "textual", "torch", "transformers", "pynvml", "yaml", "requests", "starlette")


def test_importing_the_core_loads_no_io_libraries():
    code = (
        "import json, sys\n"
        "import tei_manager.core.planner, tei_manager.core.tuning, tei_manager.core.catalog\n"
        "import tei_manager.core.plan, tei_manager.core.facts, tei_manager.core.models\n"
        "import tei_manager.core.capabilities, tei_manager.core.addresses, tei_manager.runtimes.registry\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
