"""`tei-manager tune` end to end: the quickstart's demo-embed through the process backend, for real.

Real worker processes (the packaged MiniLM), the real load generator, the real report files and a
`--write` round trip, all through the CLI's entry point. The space is narrowed with `--space` and
the steps shortened so the run stays near a minute on two shared cores; no speed is asserted.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tei_manager.backends.process import ProcessBackend
from tei_manager.cli.app import main
from tei_manager.profiles import load_profile
from tei_manager.tune import calibration

QUICKSTART = Path(__file__).resolve().parents[2] / "profiles" / "quickstart.yaml"
NARROW = ["--space", "max_batch_tokens=1024,4096", "--space", "max_client_batch_size=8",
          "--space", "forward_workers=1", "--space", "dtype=float32"]
QUICK = ["--step-seconds", "0.8", "--max-concurrency", "4", "--backend", "process"]


def processes_logging_under(directory: Path) -> list[int]:
    """Live processes whose stdout is a log file under ``directory`` (the process backend's workers)."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/1"):
        try:
            target = os.readlink(fd)
            state = (fd.parents[1] / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if target.startswith(str(directory)) and state != "Z":
            found.append(int(fd.parents[1].name))
    return found


@pytest.fixture()
def profile_path(tmp_path: Path) -> Path:
    path = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, path)
    return path


@pytest.mark.slow
def test_tune_the_quickstart_through_the_cli_and_write_it_back(profile_path: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = profile_path.read_text()
    out = tmp_path / "report"
    code = main(["tune", str(profile_path), "--deployment", "demo-embed", "--slo-p99-ms", "20000",
                 "--budget", "100s", "--out", str(out), "--write", *NARROW, *QUICK])
    shown = capsys.readouterr()
    assert code == 0, shown.err
    # The terminal: the table, the summary with the gain (or the keep-it verdict), the chart.
    assert "demo-embed: throughput at p99 <= 20000 ms on cpu" in shown.out
    assert "demo-embed: chosen" in shown.out
    assert "gain over the current setting" in shown.out
    assert "* chosen, # current" in shown.out
    assert "wrote demo-embed's tuning" in shown.out

    # The files: JSON and PNG.
    report = json.loads((out / "tune.json").read_text())
    (entry,) = report["deployments"]
    assert entry["deployment"] == "demo-embed" and entry["current"]["settings"]["max_batch_tokens"] == 4096
    assert (out / "demo-embed.png").read_bytes()[:4] == b"\x89PNG"
    recommended = entry["recommended"]

    # --write: only the tuning values and one comment changed; everything else byte for byte.
    after = profile_path.read_text()
    changed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:2] in ("- ", "+ ")]
    tuned = ("max_batch_tokens:", "max_concurrent_requests:", "max_client_batch_size:", "dtype:", "extra_args:",
             "- --forward-workers", "- '1'", "# tuned by tei-manager tune")
    assert all(line[2:].strip().startswith(tuned) for line in changed), changed
    assert after.count("# tuned by tei-manager tune") == 1 and "p99 SLO 20000 ms" in after
    written = yaml.safe_load(after)["deployments"]
    assert written[0]["tuning"]["max_batch_tokens"] == recommended["max_batch_tokens"]
    assert written[0]["tuning"]["max_concurrent_requests"] == recommended["max_concurrent_requests"]
    assert written[1] == yaml.safe_load(before)["deployments"][1]  # demo-rerank untouched
    load_profile(profile_path)  # still a valid profile

    # The peaks went to the calibration store; no trial instance is left, no live one was started.
    assert {m.max_batch_tokens for m in calibration.load()} >= {4096}
    assert ProcessBackend().list("quickstart-tune") == [] and ProcessBackend().list("quickstart") == []
    assert processes_logging_under(Path(os.environ["TEI_MANAGER_STATE_DIR"])) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--deployment", "nope"], "no deployment named 'nope'"),
    (["--workload", "/nonexistent/texts.jsonl"], "no such file"),
    (["--budget", "5s"], "too small for one trial"),
    (["--budget", "ten minutes"], "cannot read the budget"),
    (["--space", "max_batch_tokens"], "cannot read 'max_batch_tokens'"),
    (["--space", "flux=1,2"], "no such dimension"),
])
def test_clear_errors_before_anything_starts(profile_path: Path, tmp_path: Path, args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", str(profile_path), "--slo-p99-ms", "100", "--out", str(tmp_path / "o"), *QUICK, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert ProcessBackend().list("quickstart-tune") == []
    assert not (tmp_path / "o").exists()


def test_an_unreadable_workload_line_is_named(profile_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "texts.jsonl"
    sample.write_text('{"text": "fine"}\n{"txt": "typo"}\n', encoding="utf-8")
    code = main(["tune", str(profile_path), "-d", "demo-embed", "--slo-p99-ms", "100", "--workload", str(sample),
                 *QUICK])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and f"{sample}:2" in err and '"text"' in err


@pytest.mark.slow
def test_ctrl_c_removes_the_trial_instance_and_writes_nothing(profile_path: Path, tmp_path: Path) -> None:
    """SIGINT to a real `tei-manager tune` process while a trial instance runs (the process backend
    starts workers in their own session, so only tune's own cleanup can remove them)."""
    import signal
    import subprocess
    import sys
    import time

    state = Path(os.environ["TEI_MANAGER_STATE_DIR"])
    records = state / "quickstart-tune" / "instances"
    before = profile_path.read_text()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tei_manager.cli.app", "tune", str(profile_path), "-d", "demo-embed",
         "--slo-p99-ms", "20000", "--budget", "5m", "--out", str(tmp_path / "out"), "--write", *NARROW, *QUICK],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 120
        pids: list[int] = []
        while not pids:
            assert proc.poll() is None and time.monotonic() < deadline, "no trial instance started"
            time.sleep(0.2)
            pids = [pid for p in records.glob("*.json") if (pid := json.loads(p.read_text()).get("pid"))]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert "the trial instances were removed" in err.decode() and b"Traceback" not in err
    assert not list(records.glob("*.json"))
    for pid in pids:  # the worker is gone (or a zombie of the exited tune, reaped by init)
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert profile_path.read_text() == before
