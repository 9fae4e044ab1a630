"""An unpadded forward pass for BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa: MiniLM, bge-*).

A padded batch costs its longest input times its size: with requests of one short query each, a
batch of 16 random RAG texts (8-64 words) is about half padding, and every Linear layer (nearly
all of the work) multiplies the padding too. Here the batch's tokens are packed into one
[tokens, hidden] matrix instead, with no padding, so the embeddings, the projections, the
feed-forward layers and the layer norms (all per token) only see real tokens. Only attention
needs sequences: per layer, Q/K/V are gathered into a padded [batch, heads, longest, head_dim]
tensor for one scaled-dot-product call with a padding mask and scattered back, which costs
longest^2 per sequence instead of hidden^2 per token (a few percent of the layer here).

This is the same computation as the Hugging Face modules (same weights, same ops in the same
dtype, post-layer-norm residuals), so outputs match them within rounding (tests compare both).
It reads the weights from the loaded Hugging Face model rather than copying them, except Q, K
and V, which are concatenated into one projection (one matrix product instead of three).

`PackedEncoder.supports(model)` says whether a loaded model has the layout this pass implements;
anything else (relative positions, other architectures, remote code) keeps the Hugging Face path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
# Where positions start: BERT counts from 0; RoBERTa-style models from padding_idx + 1.
OFFSET_POSITIONS = ("roberta", "xlm-roberta")


@dataclass(frozen=True)
class _Layer:
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    attn_out: torch.nn.Linear
    attn_norm: torch.nn.LayerNorm
    ffn_in: torch.nn.Linear
    ffn_out: torch.nn.Linear
    ffn_norm: torch.nn.LayerNorm


@dataclass(frozen=True)
class PackedBatch:
    """A batch's tokens in one row per token, and where each input's tokens are."""

    ids: torch.Tensor  # [tokens] int64
    type_ids: torch.Tensor  # [tokens] int64
    positions: torch.Tensor  # [tokens] int64
    lengths: list[int]
    starts: torch.Tensor  # [batch] int64: row of each input's first token
    gather: torch.Tensor  # [batch * longest] int64: packed row for each padded slot (0 for padding)
    valid: torch.Tensor  # [batch, longest] bool: real tokens in the padded layout
    rows: torch.Tensor  # [tokens] int64: the padded slot of each packed row (the inverse of `gather`)
    longest: int


class PackedEncoder:
    """Runs a BERT-family encoder on unpadded token rows."""

    def __init__(self, encoder_model: Any) -> None:
        config = encoder_model.config
        self.config = config
        self.heads = int(config.num_attention_heads)
        self.head_dim = int(config.hidden_size) // self.heads
        emb = encoder_model.embeddings
        self.word = emb.word_embeddings
        self.position = emb.position_embeddings
        self.token_type = getattr(emb, "token_type_embeddings", None)
        self.embed_norm = emb.LayerNorm
        self.position_offset = (int(config.pad_token_id) + 1) if config.model_type in OFFSET_POSITIONS else 0
        self.layers = [self._layer(layer) for layer in encoder_model.encoder.layer]

    @staticmethod
    def supports(encoder_model: Any) -> bool:
        """True when the model is an HF BERT-family encoder with the standard layout."""
        config = getattr(encoder_model, "config", None)
        if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            return False
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            return False
        if getattr(config, "hidden_act", None) != "gelu" or getattr(config, "is_decoder", False):
            return False
        if int(getattr(config, "chunk_size_feed_forward", 0) or 0) != 0:
            return False
        try:
            layer = encoder_model.encoder.layer[0]
            attn = layer.attention.self
            parts = (attn.query, attn.key, attn.value, layer.attention.output.dense, layer.attention.output.LayerNorm,
                     layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm,
                     encoder_model.embeddings.word_embeddings, encoder_model.embeddings.position_embeddings,
                     encoder_model.embeddings.LayerNorm)
        except (AttributeError, IndexError):
            return False
        return all(isinstance(p, torch.nn.Module) for p in parts)

    @staticmethod
    def _layer(layer: Any) -> _Layer:
        attn = layer.attention.self
        qkv_weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight], dim=0).detach()
        qkv_bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias], dim=0).detach()
        return _Layer(
            qkv_weight=qkv_weight,
            qkv_bias=qkv_bias,
            attn_out=layer.attention.output.dense,
            attn_norm=layer.attention.output.LayerNorm,
            ffn_in=layer.intermediate.dense,
            ffn_out=layer.output.dense,
            ffn_norm=layer.output.LayerNorm,
        )

    # ---- batch layout ------------------------------------------------------------------------
    def pack(
        self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]], device: torch.device
    ) -> PackedBatch:
        lengths = [len(x) for x in ids]
        longest = max(lengths)
        flat_ids = [t for row in ids for t in row]
        flat_types = [t for row in type_ids for t in row]
        starts_list, at = [], 0
        for n in lengths:
            starts_list.append(at)
            at += n
        positions = torch.cat([torch.arange(n, dtype=torch.int64) for n in lengths]) + self.position_offset
        lengths_t = torch.tensor(lengths, dtype=torch.int64)
        starts = torch.tensor(starts_list, dtype=torch.int64)
        slot = torch.arange(longest, dtype=torch.int64)
        valid = slot.unsqueeze(0) < lengths_t.unsqueeze(1)
        gather = torch.where(valid, starts.unsqueeze(1) + slot.unsqueeze(0), torch.zeros((), dtype=torch.int64))
        return PackedBatch(
            ids=torch.tensor(flat_ids, dtype=torch.int64, device=device),
            type_ids=torch.tensor(flat_types, dtype=torch.int64, device=device),
            positions=positions.to(device),
            lengths=lengths,
            starts=starts.to(device),
            gather=gather.reshape(-1).to(device),
            valid=valid.to(device),
            rows=valid.reshape(-1).nonzero().squeeze(1).to(device),
            longest=longest,
        )

    # ---- the forward pass ----------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Last hidden states, one row per token: [tokens, hidden]."""
        x: torch.Tensor = self.word(batch.ids) + self.position(batch.positions)
        if self.token_type is not None:
            x = x + self.token_type(batch.type_ids)
        x = self.embed_norm(x)
        # Boolean mask: True where a key is a real token; [batch, 1, 1, longest] broadcasts over heads and queries.
        key_mask = batch.valid[:, None, None, :]
        count = len(batch.lengths)
        for layer in self.layers:
            qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias)  # [tokens, 3 * hidden]
            padded = qkv.index_select(0, batch.gather).view(count, batch.longest, 3, self.heads, self.head_dim)
            q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, longest, head_dim]
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            context = context.transpose(1, 2).reshape(count * batch.longest, -1).index_select(0, batch.rows)
            x = layer.attn_norm(layer.attn_out(context) + x)
            x = layer.ffn_norm(layer.ffn_out(F.gelu(layer.ffn_in(x))) + x)
        return x

    @staticmethod
    def first_tokens(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """The first token of each input: [batch, hidden] (CLS pooling, classification heads)."""
        return hidden.index_select(0, batch.starts)

    @staticmethod
    def last_tokens(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        ends = batch.starts + torch.tensor(batch.lengths, dtype=torch.int64, device=hidden.device) - 1
        return hidden.index_select(0, ends)

    @staticmethod
    def mean(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Mean over each input's tokens, in float32: [batch, hidden]."""
        lengths = torch.tensor(batch.lengths, dtype=torch.int64, device=hidden.device)
        owner = torch.repeat_interleave(torch.arange(len(batch.lengths), device=hidden.device), lengths)
        sums = torch.zeros(len(batch.lengths), hidden.shape[1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, owner, hidden.float())
        return sums / lengths.unsqueeze(1).to(torch.float32)

    @staticmethod
    def split(hidden: torch.Tensor, batch: PackedBatch) -> list[torch.Tensor]:
        """Each input's token rows."""
        return list(torch.split(hidden, batch.lengths))
