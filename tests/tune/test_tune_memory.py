"""Peak-memory probes: the process's own high-water mark, and a cgroup's (read from files as the kernel writes them)."""

from __future__ import annotations

import os
from pathlib import Path

from tei_manager.tune.memory import CgroupPeak, RssPeak


def test_rss_peak_of_this_process_and_after_it_is_gone(tmp_path: Path) -> None:
    probe = RssPeak(os.getpid())
    peak = probe.peak_bytes()
    assert peak is not None and peak > 10 << 20
    # A pid that does not exist (any more): the last figure seen, or None if there never was one.
    assert RssPeak(2**22 + 12345).peak_bytes() is None
    gone = RssPeak(os.getpid(), proc=tmp_path)  # an empty /proc: the process has exited
    assert gone.peak_bytes() is None


def test_cgroup_v2_then_v1_files(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.peak").write_text("734003200\n")
    assert CgroupPeak(v2).peak_bytes() == 734003200
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.max_usage_in_bytes").write_text("524288000\n")
    probe = CgroupPeak(v1)
    assert probe.peak_bytes() == 524288000
    (v1 / "memory.max_usage_in_bytes").unlink()  # the container was removed
    assert probe.peak_bytes() == 524288000
    assert CgroupPeak(tmp_path / "none").peak_bytes() is None
