"""Sizing a model from its own files: config.json, sentence-transformers files, safetensors headers."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.hub_standin import hub_standin
from fixtures.tiny_models import build_tiny_embedder, build_tiny_reranker, minilm_path

from tei_manager.core.catalog import KNOWN_MODELS
from tei_manager.models.sizing import (
    HubModelFiles,
    LocalModelFiles,
    SizingError,
    size_from_files,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_embedder(root / "acme" / "tiny-embedder")
    build_tiny_reranker(root / "acme" / "tiny-reranker")
    return root


def test_the_real_minilm_sizes_as_the_catalog_says() -> None:
    info = size_from_files("sentence-transformers/all-MiniLM-L6-v2", LocalModelFiles(minilm_path()))
    known = KNOWN_MODELS["sentence-transformers/all-MiniLM-L6-v2"]
    assert (info.task, info.hidden_size, info.num_layers, info.num_heads, info.max_input_length,
            info.default_pooling) == ("embed", 384, 6, 12, 256, "mean")
    assert info.params_millions == pytest.approx(known.params_millions, rel=0.01)


def test_a_bge_m3_shaped_embedder_and_a_reranker(tiny: Path) -> None:
    embedder = size_from_files("acme/tiny-embedder", LocalModelFiles(tiny / "acme" / "tiny-embedder"))
    assert (embedder.task, embedder.hidden_size, embedder.num_layers, embedder.default_pooling) == ("embed", 32, 2, "cls")
    assert embedder.max_input_length == 64  # sentence_bert_config's max_seq_length caps the positions
    reranker = size_from_files("acme/tiny-reranker", LocalModelFiles(tiny / "acme" / "tiny-reranker"))
    assert reranker.task == "rerank"
    assert reranker.max_input_length == 128  # XLM-R: 130 positions less the padding offset
    assert reranker.params_millions > embedder.params_millions  # the classification head


def test_a_mirror_sizes_from_headers_without_downloading_the_weights(tiny: Path) -> None:
    """The hub is not reachable here: a stand-in on loopback serves the hub's file API."""
    local = size_from_files("acme/tiny-embedder", LocalModelFiles(tiny / "acme" / "tiny-embedder"))
    weights = (tiny / "acme" / "tiny-embedder" / "model.safetensors").stat().st_size
    with hub_standin(tiny) as hub:
        remote = size_from_files("acme/tiny-embedder", HubModelFiles(hub.endpoint, "acme/tiny-embedder"))
        assert remote == local
        weight_reads = [r for r in hub.requests if r.endswith("model.safetensors")]
        assert len(weight_reads) == 2  # the 8-byte length, then the header
        assert hub.bytes_sent < weights / 2


def test_sharded_weights_add_up(tmp_path: Path) -> None:
    shutil.copytree(minilm_path(), tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    save_file({"a": np.zeros((1000, 10), np.float16)}, str(tmp_path / "m" / "model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros((5, 4), np.float32), "c": np.zeros(7, np.float32)},
              str(tmp_path / "m" / "model-00002-of-00002.safetensors"))
    (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}))
    info = size_from_files("x/sharded", LocalModelFiles(tmp_path / "m"))
    assert info.params_millions == pytest.approx((10_000 + 20 + 7) / 1e6)


def test_missing_or_broken_files_say_where_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SizingError, match="has no config.json") as missing:
        size_from_files("x/empty", LocalModelFiles(tmp_path))
    assert str(tmp_path) in str(missing.value)
    assert "fix:" in str(missing.value)
    shutil.copy(minilm_path() / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(SizingError, match="is not a safetensors file"):
        size_from_files("x/broken", LocalModelFiles(tmp_path))


def test_an_unknown_repository_on_the_mirror(tiny: Path) -> None:
    with hub_standin(tiny) as hub, pytest.raises(SizingError, match="has no config.json") as err:
        size_from_files("acme/nope", HubModelFiles(hub.endpoint, "acme/nope"))
    assert "acme/nope@main" in str(err.value)
