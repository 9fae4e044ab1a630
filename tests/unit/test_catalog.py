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
