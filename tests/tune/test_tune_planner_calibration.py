"""The planner uses tune's measured peaks where they exist and the VRAM model's estimate where not,
and `plan` says which (the planning service reads the store; the planner stays pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tei_manager.cli.app import main
from tei_manager.core.facts import DockerFact, HostFacts, parse_gpu_specs
from tei_manager.core.planner import plan
from tei_manager.core.tuning import CalibrationKey, MeasuredPeak
from tei_manager.errors import OvercommitError
from tei_manager.profiles import load_profile
from tei_manager.tune import calibration

L20_SHARED = Path(__file__).resolve().parents[2] / "profiles" / "l20-shared.yaml"
GPUS = "0:NVIDIA L20:46068MiB:8.9"
ONE_L20 = HostFacts(gpus=parse_gpu_specs(GPUS), docker=DockerFact(reachable=True, nvidia_runtime=True),
                    origin="described")
MiB = 1 << 20
EMBEDDING = CalibrationKey("BAAI/bge-m3", "tei", "float16", 16384, "NVIDIA L20")


def test_a_measured_peak_replaces_the_estimate_for_exactly_that_instance() -> None:
    profile = load_profile(L20_SHARED)
    estimated = plan(profile, ONE_L20)
    measured = plan(profile, ONE_L20, calibration={EMBEDDING: MeasuredPeak(4000 * MiB + 1, "2026-11-30T10:00:00Z")})

    figure = measured.measured_vram["bge-embedding"]
    assert figure.total_mib == 4001  # rounded up: a budget never counts less than was measured
    assert figure.estimated_mib == estimated.instance("bge-embedding").vram.total_mib  # type: ignore[union-attr]
    assert (measured.vram_source("bge-embedding"), measured.vram_source("bge-reranker")) == ("measured", "estimated")
    change = 4001 - figure.estimated_mib
    assert measured.gpus[0].planned_mib == estimated.gpus[0].planned_mib + change
    # Bookkeeping only: the instances themselves (and so their spec hashes) do not change.
    assert measured.instances == estimated.instances


def test_a_peak_measured_on_another_gpu_or_batch_budget_is_not_used() -> None:
    profile = load_profile(L20_SHARED)
    elsewhere = {EMBEDDING._replace(device="NVIDIA A10"): MeasuredPeak(4000 * MiB),
                 EMBEDDING._replace(max_batch_tokens=8192): MeasuredPeak(4000 * MiB)}
    assert plan(profile, ONE_L20, calibration=elsewhere).measured_vram == {}


def test_a_measured_peak_can_overcommit_a_gpu_and_the_error_says_it_was_measured() -> None:
    with pytest.raises(OvercommitError) as exc:
        plan(load_profile(L20_SHARED), ONE_L20, calibration={EMBEDDING: MeasuredPeak(60_000 * MiB)})
    assert "bge-embedding: 60000 MiB measured by tune at max_batch_tokens 16384" in exc.value.what


def test_plan_says_which_figure_it_used(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    calibration.record([calibration.Measurement(*EMBEDDING, 3900 * MiB, "2026-11-30T10:00:00Z")])
    assert main(["plan", str(L20_SHARED), "--gpus", GPUS, "--docker"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "3,900 MiB measured by tune (2026-11-30T10:00:00Z) at max_batch_tokens 16384" in out
    assert "MiB estimated = weights" in out and "not measured" in out  # the reranker
    assert main(["plan", str(L20_SHARED), "--gpus", GPUS, "--docker", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["measured_vram"]["bge-embedding"]["total_mib"] == 3900


def test_a_damaged_store_is_a_warning_not_a_failed_plan(capsys: pytest.CaptureFixture[str]) -> None:
    path = calibration.default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert main(["plan", str(L20_SHARED), "--gpus", GPUS, "--docker"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "measured peaks not used" in out and "delete the file" in out
