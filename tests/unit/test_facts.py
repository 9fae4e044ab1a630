"""`--gpus` strings describe another host's GPUs."""

from __future__ import annotations

import pytest

from tei_manager.core.facts import HostFacts, parse_gpu_specs


def test_two_l20s():
    gpus = parse_gpu_specs("0:NVIDIA L20:46068MiB:8.9, 1:NVIDIA L20:46068MiB:8.9")
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA L20" and gpus[0].total_mib == 46068
    assert gpus[1].compute_capability == (8, 9) and gpus[1].arch_label == "8.9"
    assert gpus[0].free_mib is None


def test_units_default_to_mib_and_gib_converts():
    t4, h100 = parse_gpu_specs("0:Tesla T4:15360:7.5,1:H100:80GiB:9.0")
    assert t4.total_mib == 15360
    assert h100.total_mib == 80 * 1024


@pytest.mark.parametrize("bad", ["0:L20:46068MiB", "L20:46068MiB:8.9", "0:L20:lots:8.9", "0:L20:46068MiB:89"])
def test_bad_specs_say_how_to_write_them(bad):
    with pytest.raises(ValueError, match="index:name:memory:compute_capability"):
        parse_gpu_specs(bad)


def test_duplicate_index():
    with pytest.raises(ValueError, match="twice"):
        parse_gpu_specs("0:A:1000:8.0,0:B:1000:8.0")


def test_host_lookup():
    facts = HostFacts(gpus=parse_gpu_specs("3:A100:40GiB:8.0"), origin="described")
    assert facts.gpu(3) is not None and facts.gpu(0) is None
