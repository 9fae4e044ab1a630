"""`tei-manager tui`: its options, and that the rest of the CLI never needs textual."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from tei_manager.cli.app import app


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["tui", "--help"])
    assert result.exit_code == 0
    for option in ("--profiles-dir", "--backend", "--gateway-url"):
        assert option in result.output


def test_an_unknown_backend_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["tui", "--backend", "nomad"])
    assert result.exit_code == 2
    assert "'nomad'" in result.output and "kubernetes" in result.output  # the choices, however wrapped


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_cli_and_the_tui_services_load_without_textual() -> None:
    """`plan`, `apply` and `status` users need not install the [tui] extra."""
    done = run_python("""
        import sys
        import tei_manager.cli.app, tei_manager.tui.services, tei_manager.tui.gateway_stats
        print(sorted(m for m in sys.modules if m == "textual" or m.startswith("textual.")))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_textual_the_command_prints_the_install_hint() -> None:
    done = run_python("""
        import sys
        sys.modules["textual"] = None  # what an environment without the [tui] extra looks like
        from tei_manager.cli.app import main
        sys.exit(main(["tui"]))
    """)
    assert done.returncode == 1
    assert "needs textual" in done.stderr and "pip install textual" in done.stderr
    assert "Traceback" not in done.stderr
