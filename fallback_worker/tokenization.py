"""Text to token ids, with TEI's truncation and length rules.

A `tokenizers.Tokenizer` keeps truncation as mutable state, so changing it per request would race
between worker threads. We build one frozen copy per truncation mode up front instead; each copy
is only read afterwards, which is safe from any number of threads.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer

from .errors import EmptyError, TokenizerError, ValidationError

# One input: text, a (query, text) pair, or token ids the client already has.
TextInput = str | tuple[str, str] | list[int]
MAX_CHAR_MULTIPLIER = 250


def _count_chars(item: TextInput) -> int:
    """TEI's `count_chars`: Unicode scalar values; both texts of a pair; the number of ids."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, tuple):
        return len(item[0]) + len(item[1])
    return len(item)


def _cut_text(text: str, limit: int) -> str:
    # Rust's String::truncate(limit) counts bytes, and TEI only cuts when byte `limit` starts a
    # character (`is_char_boundary`); otherwise the text stays whole and the tokenizer's
    # truncation alone applies. Reproduced byte for byte.
    raw = text.encode("utf-8")
    if limit >= len(raw):
        return text
    if raw[limit] & 0xC0 == 0x80:  # a UTF-8 continuation byte: not a boundary
        return text
    return raw[:limit].decode("utf-8")


def _cut(item: TextInput, limit: int, direction: str) -> TextInput:
    """TEI's `apply_limit` for an input over the character cap (with truncation on): a text is cut
    to `limit` bytes, each text of a pair to `limit / 2`.

    TEI leaves ids whole; decoding and re-encoding 300,000 of them took 660 MB here (the truncating
    tokenizer keeps every overflow piece). We keep the `limit` ids on the side truncation keeps,
    which still holds far more than max_input_length tokens, so the result is TEI's.
    """
    if isinstance(item, str):
        return _cut_text(item, limit)
    if isinstance(item, tuple):
        return (_cut_text(item[0], limit // 2), _cut_text(item[1], limit // 2))
    return item[:limit] if direction == "right" else item[-limit:]


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

    @property
    def char_limit(self) -> int:
        """TEI's cap on characters per input, checked before tokenizing (core/src/tokenization.rs:
        MAX_CHAR_MULTIPLIER = 250, limit = max_input_length * 250)."""
        return self.max_input_length * MAX_CHAR_MULTIPLIER

    def encode(
        self, inputs: Sequence[TextInput], *, truncate: bool, direction: str = "right", prompt: str | None = None
    ) -> list[Encoded]:
        """Encode a request's inputs as TEI's `encode_input` does; raises TEI's Empty/Validation/Tokenizer errors.

        ``prompt`` is prepended to text (and decoded id) inputs after the character check, as in TEI.
        """
        limit = self.max_input_length
        texts: list[str | tuple[str, str]] = []
        specials: list[bool] = []
        for item in inputs:
            chars = _count_chars(item)
            if chars == 0:
                raise EmptyError("Input validation error: `inputs` cannot be empty")
            if chars > self.char_limit:
                if not truncate:
                    raise ValidationError(f"`inputs` must have less than {self.char_limit} characters. Given: {chars}")
                item = _cut(item, self.char_limit, direction)
            if isinstance(item, list):
                # TEI re-tokenizes client ids: decode them (unknown ids are dropped by the decoder)
                # and encode the text again; without a prompt, special tokens are kept from the ids
                # and none are added; with one, they are skipped and the prompted text gets them.
                text = self._decode_one(item, skip_special_tokens=prompt is not None)
                if prompt is not None:  # TEI: `if let Some(pre_prompt)`, so an empty prompt counts
                    texts.append(prompt + text)
                    specials.append(True)
                else:
                    texts.append(text)
                    specials.append(False)
                continue
            if isinstance(item, str) and prompt is not None:
                item = prompt + item
            texts.append(item)
            specials.append(True)
        tokenizer = self._truncating[direction] if truncate else self._plain
        try:
            encodings = self._encode_all(tokenizer, texts, specials)
        except Exception as exc:  # noqa: BLE001 - the Rust side reports bad input as a plain Exception
            raise TokenizerError(str(exc)) from None
        out: list[Encoded] = []
        for item, enc in zip(inputs, encodings, strict=True):  # one text, so one encoding, per input
            if len(enc.ids) > limit:
                raise ValidationError(f"`inputs` must have less than {limit} tokens. Given: {len(enc.ids)}")
            if not enc.ids:  # ids that were all unknown decode to nothing
                raise EmptyError("Input validation error: `inputs` cannot be empty")
            out.append(Encoded(enc.ids, enc.type_ids, _count_chars(item)))
        return out

    @staticmethod
    def _encode_all(tokenizer: Tokenizer, texts: list[str | tuple[str, str]], specials: list[bool]) -> list[Encoding]:
        """One encode_batch per add_special_tokens value (usually just one), results in input order."""
        out: list[Encoding | None] = [None] * len(texts)
        for flag in (True, False):
            idx = [i for i, s in enumerate(specials) if s is flag]
            if idx:
                encodings = tokenizer.encode_batch([texts[i] for i in idx], add_special_tokens=flag)
                for i, enc in zip(idx, encodings, strict=True):
                    out[i] = enc
        return [e for e in out if e is not None]

    def _decode_one(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        try:
            return str(self._plain.decode(ids, skip_special_tokens=skip_special_tokens))
        except Exception as exc:  # noqa: BLE001 - as above
            raise TokenizerError(str(exc)) from None

    def check_length(self, text: str) -> None:
        """/tokenize's rule: TEI tokenizes without truncation, so text over the character cap is refused."""
        chars = len(text)
        if chars == 0:
            raise EmptyError("Input validation error: `inputs` cannot be empty")
        if chars > self.char_limit:
            raise ValidationError(f"`inputs` must have less than {self.char_limit} characters. Given: {chars}")

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[dict[str, object]]]:
        """The /tokenize body: TEI reports byte offsets into the UTF-8 input, special tokens without offsets."""
        try:
            encodings = self._plain.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        except Exception as exc:  # noqa: BLE001 - as above
            raise TokenizerError(str(exc)) from None
        result: list[list[dict[str, object]]] = []
        for text, enc in zip(texts, encodings, strict=True):
            raw = text.encode("utf-8")
            # Character offset -> byte offset, computed once per text (not per token, which is
            # quadratic on long inputs); ASCII text needs no table.
            to_byte = None if text.isascii() else [0, *itertools.accumulate(len(c.encode("utf-8")) for c in text)]
            tokens: list[dict[str, object]] = []
            per_token = zip(enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, strict=True)
            for tid, tok, (start, stop), special in per_token:
                if special:
                    tokens.append({"id": tid, "text": tok, "special": True, "start": None, "stop": None})
                    continue
                b_start, b_stop = (start, stop) if to_byte is None else (to_byte[start], to_byte[stop])
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
