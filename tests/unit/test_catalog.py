"""TEI image per GPU architecture, and what the catalog knows about models."""

from __future__ import annotations

import pytest

from tei_manager.core.catalog import KNOWN_MODELS, UnknownModel, model_info, tei_image, tei_tag, uses_flash_attention
from tei_manager.core.models import ModelSpec

REPO = "ghcr.io/huggingface/text-embeddings-inference"


@pytest.mark.parametrize(
    ("cc", "tag"),
    [
        (None, "cpu-1.9"),
        ((7, 5), "turing-1.9"),
        ((8, 0), "1.9"),
        ((8, 6), "86-1.9"),
        ((8, 9), "89-1.9"),
        ((9, 0), "hopper-1.9"),
        ((10, 0), "100-1.9"),
        ((12, 0), "120-1.9"),
        ((12, 1), "121-1.9"),
    ],
)
def test_tei_tag_per_compute_capability(cc, tag):
    assert tei_tag(cc, "1.9") == tag
    assert tei_image(REPO, "1.9", cc) == f"{REPO}:{tag}"


@pytest.mark.parametrize("cc", [(6, 1), (7, 0), (3, 7), (8, 7), (11, 0)])
def test_no_image_for_unsupported_or_unknown_arches(cc):
    assert tei_tag(cc, "1.9") is None
    assert tei_image(REPO, "1.9", cc) is None


def test_turing_and_cpu_batches_are_padded():
    assert not uses_flash_attention((7, 5))
    assert not uses_flash_attention(None)
    assert uses_flash_attention((8, 9))


def test_bge_models_are_known_with_8192_token_inputs():
    for hub_id in ("BAAI/bge-m3", "BAAI/bge-reranker-v2-m3"):
        info = KNOWN_MODELS[hub_id]
        assert info.max_input_length == 8192
        assert info.hidden_size == 1024 and info.num_layers == 24
    assert KNOWN_MODELS["BAAI/bge-m3"].task == "embed"
    assert KNOWN_MODELS["BAAI/bge-reranker-v2-m3"].task == "rerank"


def test_profile_numbers_override_the_catalog():
    info = model_info(ModelSpec(id="BAAI/bge-m3", task="embed", max_input_length=512))
    assert info.max_input_length == 512
    assert info.hidden_size == 1024


def test_unknown_model_needs_its_numbers():
    with pytest.raises(UnknownModel) as exc:
        model_info(ModelSpec(id="acme/encoder", task="embed", hidden_size=768))
    assert exc.value.missing == ["params_millions", "num_layers", "max_input_length"]
    info = model_info(ModelSpec(id="acme/encoder", task="embed", params_millions=100, hidden_size=768,
                                num_layers=12, max_input_length=512))
    assert info.num_heads == 12


# --- the TEI runtime's image choice: exact versions and the host's CPU architecture -----------------

from tei_manager.core.facts import GpuFact  # noqa: E402
from tei_manager.core.models import TeiImage  # noqa: E402
from tei_manager.runtimes.base import Device  # noqa: E402
from tei_manager.runtimes.tei import RUNTIME as TEI  # noqa: E402


class _Profile:
    """Only what the TEI runtime reads from a profile."""

    def __init__(self, version: str = "1.9.4", variant: str = "per-arch") -> None:
        self.tei_image = TeiImage(version=version, variant=variant)


def _gpu(cc: tuple[int, int], name: str = "GPU") -> GpuFact:
    return GpuFact(index=0, name=name, total_mib=80_000, compute_capability=cc)


def test_default_tei_version_is_an_exact_release():
    assert TeiImage().version == "1.9.4"


@pytest.mark.parametrize(("arch", "cc", "tag"), [
    ("x86_64", None, "cpu-1.9.4"),
    ("arm64", None, "cpu-arm64-1.9.4"),
    ("x86_64", (8, 9), "89-1.9.4"),
    ("arm64", (12, 1), "121-1.9.4"),  # DGX Spark
    ("x86_64", (12, 1), "121-1.9.4"),
    ("arm64", (9, 0), None),  # GH200: no arm64 TEI image
    ("arm64", (10, 0), None),  # GB200
])
def test_tei_tag_depends_on_the_cpu_architecture(arch, cc, tag):
    device = Device(gpu=_gpu(cc) if cc else None, cpu_arch=arch)
    assert TEI.tag(_Profile(), device) == tag  # type: ignore[arg-type]


def test_arm64_and_121_images_need_1_9_4():
    assert TEI.tag(_Profile("1.9.3"), Device(gpu=None, cpu_arch="arm64")) is None  # type: ignore[arg-type]
    assert TEI.tag(_Profile("1.9.3"), Device(gpu=_gpu((12, 1)))) is None  # type: ignore[arg-type]
    assert TEI.tag(_Profile("1.9.3"), Device(gpu=_gpu((8, 9)))) == "89-1.9.3"  # type: ignore[arg-type]


def test_multi_arch_cuda_image_is_an_option():
    assert TEI.tag(_Profile(variant="cuda"), Device(gpu=_gpu((8, 6)))) == "cuda-1.9.4"  # type: ignore[arg-type]
    assert TEI.tag(_Profile(variant="cuda"), Device(gpu=None)) == "cpu-1.9.4"  # type: ignore[arg-type]
    assert TEI.tag(_Profile(variant="cuda"), Device(gpu=_gpu((6, 0)))) is None  # type: ignore[arg-type]
