"""Text to token ids, with TEI's truncation and length rules.

A `tokenizers.Tokenizer` keeps truncation as mutable state, so changing it per request would race
between worker threads. We build one frozen copy per truncation mode up front instead; each copy
is only read afterwards, which is safe from any number of threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer

from .errors import EmptyError, TokenizerError, ValidationError

# One input: text, a (query, text) pair, or token ids the client already has.
TextInput = str | tuple[str, str] | list[int]


@dataclass(slots=True)
class Encoded:
    ids: list[int]
    type_ids: list[int]
    chars: int


class TextTokenizer:
    """Encodes inputs for the model; ``max_input_length`` applies to every path except /tokenize."""

    def __init__(self, tokenizer: Tokenizer, max_input_length: int) -> None:
        self.max_input_length = max_input_length
        serialized = tokenizer.to_str()
        self._plain = Tokenizer.from_str(serialized)
        self._plain.no_truncation()
        self._plain.no_padding()
        self._truncating: dict[str, Tokenizer] = {}
        for direction in ("right", "left"):
            copy = Tokenizer.from_str(serialized)
            copy.no_padding()
            copy.enable_truncation(max_input_length, strategy="longest_first", direction=direction)
            self._truncating[direction] = copy

    @property
    def plain(self) -> Tokenizer:
        return self._plain

    def encode(self, inputs: Sequence[TextInput], *, truncate: bool, direction: str = "right") -> list[Encoded]:
        """Encode a request's inputs; raises TEI's Empty/Validation/Tokenizer errors."""
        limit = self.max_input_length
        texts: list[str | tuple[str, str]] = []
        for item in inputs:
            if isinstance(item, list):
                continue
            chars = len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
            if chars == 0:
                raise EmptyError("Input validation error: `inputs` cannot be empty")
            if not truncate and chars > limit * 250:
                raise ValidationError(f"`inputs` must have less than {limit * 250} characters. Given: {chars}")
            texts.append(item)
        tokenizer = self._truncating[direction] if truncate else self._plain
        try:
            encodings: list[Encoding] = tokenizer.encode_batch(texts, add_special_tokens=True) if texts else []
        except Exception as exc:  # noqa: BLE001 - the Rust side reports bad input as a plain Exception
            raise TokenizerError(str(exc)) from None
        out: list[Encoded] = []
        it = iter(encodings)
        for item in inputs:
            if isinstance(item, list):
                out.append(self._from_ids(item, truncate=truncate, direction=direction))
                continue
            enc = next(it)
            chars = len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
            if len(enc.ids) > limit:
                raise ValidationError(f"`inputs` must have less than {limit} tokens. Given: {len(enc.ids)}")
            out.append(Encoded(enc.ids, enc.type_ids, chars))
        return out

    def _from_ids(self, ids: list[int], *, truncate: bool, direction: str) -> Encoded:
        # Client-supplied ids are used as given, like TEI: no special tokens are added.
        if not ids:
            raise EmptyError("Input validation error: `inputs` cannot be empty")
        vocab = self._plain.get_vocab_size(with_added_tokens=True)
        if any(i >= vocab for i in ids):
            raise ValidationError(f"token id out of range: the vocabulary has {vocab} tokens")
        if len(ids) > self.max_input_length:
            if not truncate:
                raise ValidationError(
                    f"`inputs` must have less than {self.max_input_length} tokens. Given: {len(ids)}"
                )
            ids = ids[: self.max_input_length] if direction == "right" else ids[-self.max_input_length :]
        return Encoded(list(ids), [0] * len(ids), 0)

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[dict[str, object]]]:
        """The /tokenize body: TEI reports byte offsets into the UTF-8 input, special tokens without offsets."""
        result: list[list[dict[str, object]]] = []
        for text, enc in zip(texts, self._plain.encode_batch(list(texts), add_special_tokens=add_special_tokens)):
            raw = text.encode("utf-8")
            tokens: list[dict[str, object]] = []
            for tid, tok, (start, stop), special in zip(enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask):
                if special:
                    tokens.append({"id": tid, "text": tok, "special": True, "start": None, "stop": None})
                    continue
                b_start = len(text[:start].encode("utf-8"))
                b_stop = b_start + len(text[start:stop].encode("utf-8"))
                tokens.append(
                    {
                        "id": tid,
                        "text": raw[b_start:b_stop].decode("utf-8", errors="replace"),
                        "special": False,
                        "start": b_start,
                        "stop": b_stop,
                    }
                )
            result.append(tokens)
        return result

    def decode(self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> list[str]:
        try:
            return self._plain.decode_batch([list(x) for x in ids], skip_special_tokens=skip_special_tokens)
        except Exception as exc:  # noqa: BLE001 - as above: tokenizers raises plain Exceptions
            raise TokenizerError(str(exc)) from None
