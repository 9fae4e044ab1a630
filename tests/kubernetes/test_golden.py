"""Golden files: the objects `export kubernetes` writes for the seed profiles, as reviewable YAML.

A change to the rendering shows up as a diff of tests/kubernetes/golden/.  When the change is
intended, regenerate them and review the diff:

    TEI_MANAGER_REGEN_GOLDEN=1 python -m pytest tests/kubernetes/test_golden.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from k8s_manifests import ROOT, SEED_PROFILES

from tei_manager.cli.app import main

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("TEI_MANAGER_REGEN_GOLDEN") == "1"


@pytest.mark.parametrize("name", SEED_PROFILES)
def test_export_matches_the_golden_files(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the profile path is relative, as a user types it
    out = tmp_path / name
    assert main(["export", "kubernetes", f"profiles/{name}.yaml", "-o", str(out)]) == 0
    golden = GOLDEN / name
    if REGEN:
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(out, golden)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in golden.iterdir()), "files differ: regenerate (see module docstring)"
    for file in written:
        assert (out / file).read_text() == (golden / file).read_text(), (
            f"{name}/{file} differs from the golden file: regenerate (see module docstring) if intended")
