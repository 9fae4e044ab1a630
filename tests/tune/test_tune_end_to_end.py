"""End to end: tune the quickstart's embed deployment (fallback worker, real MiniLM) with a tiny budget.

Real worker processes on loopback, the real load generator, the real report files and the real
profile write-back. The space is narrowed to a few points so the whole run stays near a minute on
two shared cores; nothing about speed is asserted.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from tei_manager.profiles import load_profile
from tei_manager.tune import calibration, report, writeback
from tei_manager.tune.local import LocalWorkerTarget
from tei_manager.tune.requests import current_settings, request_for
from tei_manager.tune.runner import TuneRequest, run_tune
from tei_manager.tune.trial import Schedule
from tei_manager.tune.workload import synthetic

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).resolve().parents[2] / "profiles" / "quickstart.yaml"
BUDGET_S = 60.0


def test_tune_the_quickstart_embed_deployment(tmp_path: Path, minilm_dir: Path) -> None:
    profile_path = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, profile_path)
    profile = load_profile(profile_path)
    assert current_settings(profile, "demo-embed") == {
        "max_batch_tokens": 4096, "max_concurrent_requests": 64, "max_client_batch_size": 16}

    workload = synthetic("embed", n=96, languages=("en", "zh"), seed=3)
    request = request_for(
        profile, "demo-embed", runtime="fallback", workload=workload, slo_p99_ms=20_000, on_gpu=False,
        max_input_tokens=256, default_dtype="float32",
        # A short confirmation round (the search's leader and the current setting, twice each, 1 s steps).
        schedule=Schedule(step_seconds=0.8, warmup_seconds=0.2, max_concurrency=4, confirm_leaders=1,
                          confirm_step_seconds=1.0),
        narrow={"max_batch_tokens": [1024, 4096], "max_client_batch_size": [8], "forward_workers": [1, 2],
                "dtype": ["float32"]},
    )
    assert request.space.size == 4

    targets: list[LocalWorkerTarget] = []

    def target_for(req: TuneRequest) -> LocalWorkerTarget:
        targets.append(LocalWorkerTarget(minilm_dir))
        return targets[-1]

    screen = io.StringIO()
    console = Console(file=screen, width=140, force_terminal=False)
    began = time.monotonic()
    with report.RichProgress(console) as progress:
        result = run_tune([request], target_for, budget_seconds=BUDGET_S, progress=progress)
        progress.finish()
    elapsed = time.monotonic() - began

    (dep,) = result.deployments
    assert dep.device == "cpu"
    # The budget bounds the run, confirmations included: no trial starts unless one as long as the
    # slowest so far (and the confirmation round) fits.
    again = [t for ts in dep.confirmations.values() for t in ts]
    slowest = max(t.seconds for t in [dep.current, *dep.search, *again])
    assert elapsed <= BUDGET_S + slowest + 5
    assert dep.current.settings["max_batch_tokens"] == 4096 and dep.current.meets_slo, dep.current.to_json()
    assert dep.search, "at least one setting of the space was measured"
    chosen = dep.chosen
    assert chosen is not None and chosen.meets_slo and chosen.throughput > 0
    # Chosen on confirmed figures: the current setting and the search's leader were measured again.
    assert dep.confirmed(dep.current) is not None and dep.confirmed(chosen) is not None
    # Never a slower setting than today's: the current one is kept when the search finds nothing better.
    assert dep.score(chosen) >= dep.score(dep.current)
    assert dep.gain is not None  # reported against the current setting
    recommended = dep.recommended
    assert recommended is not None
    # A searched point (client batch 8), or the current setting (16) when nothing searched beat it.
    assert recommended["max_batch_tokens"] in (1024, 4096)
    assert recommended["max_client_batch_size"] == (16 if chosen is dep.current else 8)
    assert int(recommended["max_concurrent_requests"]) >= 16  # twice the inputs in flight at the SLO, at least

    # The terminal output: progress, the table, the summary with the gain, the text chart.
    report.show(result, console)
    shown = screen.getvalue()
    assert "demo-embed" in shown and "chosen" in shown and "gain over the current setting" in shown
    assert "*" in report.text_chart(dep, result.slo_p99_ms)

    # Files: a JSON report and the PNG plot.
    files = report.save(result, tmp_path / "out")
    data = json.loads(files["json"].read_text())
    (entry,) = data["deployments"]
    assert entry["deployment"] == "demo-embed" and entry["recommended"] == recommended
    assert entry["current"]["settings"]["max_batch_tokens"] == 4096
    assert entry["search_trials"] == len(dep.search) and entry["workload"]["kind"] == "embed"
    assert entry["current"]["confirmed"]["median"] == round(dep.score(dep.current), 2)
    # The space fixes a client batch of 8 and float32; the current setting has 16 and names no dtype, so
    # it runs at the worker's default, which /info reports: the report says where it lies outside.
    runs_at = entry["current"]["reported"].get("dtype")
    assert entry["current_outside_space"] == ["max_client_batch_size 16 (searched: 8)"] + (
        [] if runs_at in (None, "float32") else [f"dtype {runs_at} (searched: float32)"])
    assert files["demo-embed"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Calibration: the peaks went to the state directory, per max-batch-tokens measured.
    stored = calibration.load()
    assert result.calibration_path == calibration.default_path()
    assert {m.max_batch_tokens for m in stored} >= {4096}
    assert all(m.model == "sentence-transformers/all-MiniLM-L6-v2" and m.device == "cpu" for m in stored)

    # --write: the chosen values land in the profile, which still loads.
    writeback.write(profile_path, "demo-embed", recommended, report.write_comment(dep, result.slo_p99_ms, "2026-11-30"))
    text = profile_path.read_text()
    tuning = yaml.safe_load(text)["deployments"][0]["tuning"]
    assert tuning["max_batch_tokens"] == recommended["max_batch_tokens"]
    assert tuning["max_client_batch_size"] == recommended["max_client_batch_size"]
    assert "# CPU batches are padded and compute bound early" in text
    assert "tuned by tei-manager tune 2026-11-30: p99 SLO 20000 ms" in text
    load_profile(profile_path)
