"""`plan` sizes models it has never seen from their files: a local directory, or a hub mirror.

No model hub is reachable here: a stand-in on loopback (tests/fixtures/hub_standin.py) serves the
hub's file API for tiny random-weight models built on the spot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.hub_standin import hub_standin

from tei_manager.cli import output
from tei_manager.cli.app import main
from tei_manager.errors import OvercommitError, PlanError
from tei_manager.services import plan_profile

ONE_GPU = "0:NVIDIA L20:46068MiB:8.9"
SMALL_GPU = "0:NVIDIA T4:2048MiB:7.5"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    for console in (output.console, output.err_console):
        monkeypatch.setattr(console, "width", 400)


def write_profile(path: Path, model: str, *, hub: str = "", deployment: str = "{gpu: 0}",
                  tuning: str = "{max_batch_tokens: 1024}") -> Path:
    path.write_text(f"""
name: sized
hf_cache: {path.parent / "cache"}
{hub}
models:
  m: {model}
tenants: {{t: {{}}}}
deployments:
  - {{tenant: t, model: m, placement: {deployment}, tuning: {tuning}}}
""")
    return path


def test_a_local_directory_is_sized_from_its_files(tmp_path: Path, hub_root: Path) -> None:
    local = hub_root / "acme" / "tiny-embedder"
    profile = write_profile(tmp_path / "p.yaml", f"{{id: acme/tiny-embedder, task: embed, path: {local}}}")
    plan = plan_profile(profile, gpus=ONE_GPU)
    assert plan.model_numbers == {"m": f"files in {local}"}
    assert plan.instances[0].vram is not None and plan.instances[0].vram.total_mib > 0


def test_a_model_on_a_mirror_is_sized_without_downloading_it(tmp_path: Path, hub_root: Path, capsys) -> None:
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path / "p.yaml", "{id: acme/tiny-embedder, task: embed}",
                                hub=f"hub: {{endpoint: {hub.endpoint}}}")
        assert main(["plan", str(profile), "--gpus", ONE_GPU]) == 0
    out = capsys.readouterr().out
    assert f"sized from  files on {hub.endpoint}" in out
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def test_the_profiles_numbers_win_over_the_files(tmp_path: Path, hub_root: Path) -> None:
    local = hub_root / "acme" / "tiny-embedder"
    profile = write_profile(tmp_path / "p.yaml",
                            f"{{id: acme/tiny-embedder, task: embed, path: {local}, params_millions: 300}}")
    plan = plan_profile(profile, gpus=ONE_GPU)
    assert plan.model_numbers == {"m": f"profile + files in {local}"}
    vram = plan.instances[0].vram
    assert vram is not None and vram.weights_mib > 500  # 300 M parameters, not the tiny model's 0.2 M


def test_catalog_models_say_so_and_stay_offline(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "p.yaml", "{id: BAAI/bge-m3, task: embed}",
                            hub="hub: {endpoint: 'http://127.0.0.1:9'}")  # nothing listens there
    assert plan_profile(profile, gpus=ONE_GPU).model_numbers == {"m": "catalog"}


def test_overcommit_of_a_sized_model_is_refused_like_a_catalog_one(tmp_path: Path, hub_root: Path) -> None:
    """A huge declared batch on a small GPU: the same OvercommitError text as for catalog models."""
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path / "p.yaml", "{id: acme/tiny-embedder, task: embed}",
                                hub=f"hub: {{endpoint: {hub.endpoint}}}", tuning="{max_batch_tokens: 4000000}")
        with pytest.raises(OvercommitError) as refused:
            plan_profile(profile, gpus=SMALL_GPU)
    text = str(refused.value)
    assert "GPU 0: NVIDIA T4 is over-committed: its instances need" in text
    assert "the budget is 1024 MiB" in text and "t-m" in text and "max_batch_tokens: auto" in text


def test_an_unknown_model_that_cannot_be_read_is_refused_with_the_reason(tmp_path: Path, hub_root: Path) -> None:
    with hub_standin(hub_root) as hub:
        profile = write_profile(tmp_path / "p.yaml", "{id: acme/not-there, task: embed}",
                                hub=f"hub: {{endpoint: {hub.endpoint}}}")
        with pytest.raises(PlanError) as refused:
            plan_profile(profile, gpus=ONE_GPU)
    assert refused.value.where == "models.m"
    assert "the planner does not know 'acme/not-there'" in refused.value.what
    assert "has no config.json" in refused.value.what and hub.endpoint in refused.value.what
    assert refused.value.fix


def test_plan_json_carries_where_the_numbers_came_from(tmp_path: Path, hub_root: Path, capsys) -> None:
    local = hub_root / "acme" / "tiny-embedder"
    profile = write_profile(tmp_path / "p.yaml", f"{{id: acme/tiny-embedder, task: embed, path: {local}}}")
    assert main(["plan", str(profile), "--gpus", ONE_GPU, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_numbers"] == {"m": f"files in {local}"}
