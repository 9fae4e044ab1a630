"""fallback_worker speaks to tei_manager only over HTTP: importing all of it must not load tei_manager."""

from __future__ import annotations

import subprocess
import sys


def test_fallback_worker_never_imports_tei_manager() -> None:
    code = (
        "import sys, pkgutil, importlib, fallback_worker\n"
        "for m in pkgutil.iter_modules(fallback_worker.__path__):\n"
        "    importlib.import_module('fallback_worker.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('tei_manager')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
