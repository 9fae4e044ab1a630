"""`tei-manager plan` and `tei-manager profile ...` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tei_manager.cli import output
from tei_manager.cli.app import main
from tei_manager.core.facts import DockerFact

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "profiles" / "quickstart.yaml")
MULTI = str(ROOT / "profiles" / "multi-tenant.yaml")
TWO_L20 = "0:NVIDIA L20:46068MiB:8.9,1:NVIDIA L20:46068MiB:8.9"
NO_NVML = "NVML Shared Library Not Found - no NVIDIA driver on this host"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Wide consoles so that assertions do not depend on line wrapping."""
    for console in (output.console, output.err_console):
        monkeypatch.setattr(console, "width", 400)


@pytest.fixture
def cpu_only_host(monkeypatch):
    """This machine as the planner sees it: no NVML, a Docker Engine without GPUs (no real probing)."""
    monkeypatch.setattr("tei_manager.probe.probe_gpus", lambda: ((), NO_NVML))
    monkeypatch.setattr("tei_manager.probe.probe_docker",
                        lambda *a, **k: DockerFact(reachable=True, version="test"))


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_json_is_the_plan(capsys, cpu_only_host):
    code, out, _ = run(["plan", QUICKSTART, "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["profile"] == "quickstart" and data["host"] == "live"
    assert [i["name"] for i in data["instances"]] == ["demo-embed", "demo-rerank"]
    assert [i["host_port"] for i in data["instances"]] == [8180, 8181]
    assert any("CPU-only host" in w for w in data["warnings"])


def test_plan_on_cpu_only_host_says_so(capsys, cpu_only_host):
    code, out, _ = run(["plan", QUICKSTART], capsys)
    assert code == 0
    assert f"CPU-only host: NVML not available ({NO_NVML}); GPU placements cannot be planned here" in out
    assert "pass --gpus to plan for another host" in out
    assert "tei-fallback-worker --model-id" in out and "--port 8180 --hostname 127.0.0.1" in out
    assert "Nothing was changed." in out


def test_gpu_profile_on_cpu_only_host_is_exit_2_with_the_way_out(capsys, cpu_only_host):
    code, out, err = run(["plan", MULTI], capsys)
    assert code == 2
    assert "GPU 0" in err and "no GPU" in err and "--gpus" in err
    assert "Traceback" not in err


def test_plan_for_described_gpus(capsys, cpu_only_host):
    code, out, _ = run(["plan", MULTI, "--gpus", TWO_L20], capsys)
    assert code == 0
    assert "described host (--gpus)" in out
    assert "ghcr.io/huggingface/text-embeddings-inference:89-1.9.4" in out
    assert "text-embeddings-router --model-id BAAI/bge-reranker-v2-m3 --port 8080 --hostname 0.0.0.0 " \
           "--max-batch-tokens 8192 --max-concurrent-requests 128 --max-client-batch-size 8" in out
    assert "GPU budget" in out and "finance-rerank, finance-embed" in out
    assert "memory 6g" in out


def test_plan_no_docker_chooses_fallback_with_reason(capsys, cpu_only_host):
    code, out, _ = run(["plan", MULTI, "--gpus", TWO_L20, "--no-docker", "--json"], capsys)
    assert code == 0
    instances = json.loads(out)["instances"]
    assert {i["runtime"] for i in instances} == {"fallback"}
    assert all("Docker Engine not reachable (--no-docker)" in i["runtime_reason"] for i in instances)


def test_bad_gpus_option_is_a_usage_error(capsys, cpu_only_host):
    code, _, err = run(["plan", QUICKSTART, "--gpus", "0:L20"], capsys)
    assert code == 2
    assert "index:name:memory:compute_capability" in err


def test_bad_profile_is_exit_2_with_line_and_suggestion(tmp_path, capsys, cpu_only_host):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(QUICKSTART).read_text().replace("max_batch_tokens: 4096", "max_batch_tokns: 4096", 1))
    code, _, err = run(["plan", str(bad)], capsys)
    assert code == 2
    assert "deployments[0].tuning.max_batch_tokns: unknown key (did you mean `max_batch_tokens`?)" in err
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if "max_batch_tokns" in text)
    assert f"bad.yaml:{line}:" in err
    assert "Traceback" not in err


def test_validate_warns_about_unset_keys_and_fails_on_them_with_strict(capsys, monkeypatch):
    monkeypatch.delenv("DEMO_API_KEY", raising=False)
    code, out, err = run(["profile", "validate", QUICKSTART], capsys)
    assert code == 0, "a fresh clone has no keys: the README's validate command must pass there"
    assert "warning:" in err and "environment variable DEMO_API_KEY is not set" in err and "tenant 'demo'" in err
    assert "OK" in out and "1 API key not set" in out
    code, _, err = run(["profile", "validate", "--strict", QUICKSTART], capsys)
    assert code == 2
    assert "environment variable DEMO_API_KEY is not set" in err and "tenant 'demo'" in err
    monkeypatch.setenv("DEMO_API_KEY", "demo-key")
    code, out, _ = run(["profile", "validate", QUICKSTART], capsys)
    assert code == 0 and "OK" in out and "1 API key read" in out


def test_validate_all_examples_without_secrets(capsys):
    files = sorted(str(p) for p in (ROOT / "profiles").glob("*.yaml"))
    code, out, err = run(["profile", "validate", "--skip-secrets", *files], capsys)
    assert code == 0, err
    assert out.count("OK") == len(files)


def test_validate_many_files_reports_each(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: {}\ndeployments: []\nextra: 1\n")
    code, out, err = run(["profile", "validate", "--skip-secrets", QUICKSTART, str(bad)], capsys)
    assert code == 2
    assert "OK" in out and "INVALID" in err and "extra: unknown key" in err
    assert "1 of 2 profiles invalid" in err


def test_schema_json_and_table(capsys):
    code, out, _ = run(["profile", "schema", "--json"], capsys)
    assert code == 0 and "deployments" in json.loads(out)["properties"]
    code, out, _ = run(["profile", "schema"], capsys)
    assert code == 0 and "max_batch_tokens" in out and "Tuning" in out


def test_console_script_in_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "tei_manager.cli.app", "plan", QUICKSTART, "--json", "--no-docker"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["instances"][0]["runtime"] == "fallback"


def test_docs_list_every_profile_field():
    from tei_manager.cli.plan_cmds import schema_rows

    doc = (ROOT / "docs" / "profiles.md").read_text()
    missing = [f"{model}.{row[0]}" for model, rows in schema_rows() for row in rows if f"| `{row[0]}` |" not in doc]
    assert missing == [], "docs/profiles.md lacks these fields; regenerate its tables from `profile schema`"
