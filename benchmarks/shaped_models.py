"""Random-weight models shaped like real bge checkouts, shared by the GPU check and the CPU peer benchmark.

Random weights cost the same FLOPs and bytes as trained ones, so speed and memory carry over; the
tokenizer is the small BPE one of the test fixtures (its lengths, not its words, set the cost).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# config.json of BAAI/bge-m3 (the reranker shares the encoder; its head adds num_labels=1).
BGE_M3_CONFIG: dict[str, Any] = {
    "vocab_size": 250002, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
    "intermediate_size": 4096, "hidden_act": "gelu", "max_position_embeddings": 8194, "type_vocab_size": 1,
    "layer_norm_eps": 1e-05, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    "position_embedding_type": "absolute",
}
# A few seconds per run on any machine: checks scripts, not speed.
SMOKE_CONFIG: dict[str, Any] = {
    **BGE_M3_CONFIG, "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 514,
}
# bge-reranker-v2-m3 scaled down to a CPU-sized cross-encoder (about MiniLM's cost per token). The
# vocabulary is cut to the fixture tokenizer's size: an embedding lookup costs the same at any
# vocabulary size, and 250k rows would only make the files slow to write and load. The 8194
# positions of the real model stay (a bigger table, no more compute): Infinity's ONNX cross-encoder
# truncates pairs to max_position_embeddings tokens, one more than a 514-position model accepts,
# and its warm-up sends pairs that long. The CPU benchmark gives its tokenizer a 512-token limit,
# the max_length FlagEmbedding reranks with, so that Infinity's torch warm-up (batch-size pairs at
# the tokenizer's limit) takes seconds, not minutes.
CPU_RERANKER_CONFIG: dict[str, Any] = {
    **BGE_M3_CONFIG, "vocab_size": 512, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536,
}
# The same for --smoke runs of the CPU benchmark (SMOKE_CONFIG's 514 positions would fail there).
SMOKE_RERANKER_CONFIG: dict[str, Any] = {**SMOKE_CONFIG, "max_position_embeddings": 8194}


def build_model(directory: Path, kind: str, config_values: dict[str, Any], device: str = "cpu", *,
                model_max_length: int | None = None) -> Path:
    """A bge-shaped checkout in `directory` (kind "embed" or "rerank"): config, float16 safetensors,
    tokenizer (its model_max_length: the positions' limit unless given) and, for "embed",
    sentence-transformers' pooling files. Kept if already built."""
    import torch
    from fixtures.tiny_models import train_tokenizer
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaModel,
    )

    if (directory / "model.safetensors").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    max_length = int(config_values["max_position_embeddings"]) - 2
    train_tokenizer(directory, model_max_length=model_max_length or max_length)
    torch.manual_seed(0)
    if kind == "embed":
        config = XLMRobertaConfig(**config_values, architectures=["XLMRobertaModel"])
        with torch.device(device):
            model: Any = XLMRobertaModel(config, add_pooling_layer=False)
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": True,
             "pooling_mode_mean_tokens": False}))
        (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}))
    else:
        config = XLMRobertaConfig(**config_values, architectures=["XLMRobertaForSequenceClassification"],
                                  num_labels=1)  # type: ignore[call-arg]  # a PretrainedConfig kwarg
        with torch.device(device):
            model = XLMRobertaForSequenceClassification(config)
    model.half().save_pretrained(directory)
    return directory
