"""BERT WordPiece tokenization with HF `tokenizers` over MiniLM's vocabulary. No torch, no gRPC.

Loads only `tokenizer.json` from a repository version directory. The file ships with padding and
truncation baked in (128); both are switched off here and applied per call instead, so every
request can choose its own max_length.

Text pairs are truncated as BERT's reference implementation does (`_truncate_seq_pair`: drop from
the longer, from the second on ties), which differs from `tokenizers`' longest-first on odd budgets.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
MAX_LENGTH_LIMIT = 512
DEFAULT_MAX_LENGTH = 256
PAD_TOKEN = "[PAD]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
TRUNCATING_TOKENIZERS_CACHED = 8


class Padding(enum.Enum):
    """How encodings of one call are padded."""

    LONGEST = "longest"
    MAX_LENGTH = "max_length"
    NONE = "none"


@dataclass(frozen=True)
class Encoding:
    """One encoded text (or text pair). Offsets are Unicode code points, end exclusive; (0, 0) for
    special and padding tokens."""

    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int]]
    tokens: list[str]


class WordPieceTokenizer:
    """A loaded tokenizer version."""

    def __init__(self, directory: Path) -> None:
        """Load `tokenizer.json` from `directory`.

        Raises:
            OSError: the file cannot be read.
            Exception: `tokenizers` cannot parse it.
        """
        self._json = (directory / TOKENIZER_FILE).read_text(encoding="utf-8")
        self._plain = self._configured(None, padded=False)
        self.vocab_size = self._plain.get_vocab_size()
        self.pad_id = self._plain.token_to_id(PAD_TOKEN)
        self._cls_id = self._plain.token_to_id(CLS_TOKEN)
        self._sep_id = self._plain.token_to_id(SEP_TOKEN)
        self._cached = lru_cache(maxsize=TRUNCATING_TOKENIZERS_CACHED)(self._configured)

    def _configured(self, max_length: int | None, padded: bool) -> Tokenizer:
        tokenizer = Tokenizer.from_str(self._json)
        if padded:
            tokenizer.enable_padding(pad_id=self._plain.token_to_id(PAD_TOKEN), pad_token=PAD_TOKEN)
        else:
            tokenizer.no_padding()
        if max_length is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(max_length, strategy="longest_first")
        return tokenizer

    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        truncation: bool = True,
        padding: Padding = Padding.LONGEST,
    ) -> list[Encoding]:
        """Encode texts (or text pairs) with [CLS]/[SEP], truncated and padded as asked.

        Args:
            texts: the texts.
            pairs: second texts, one per text, or None.
            max_length: longest result, special tokens included (at most 512).
            truncation: cut longer inputs (longest first for pairs); if False a longer input is an error.
            padding: pad to the longest encoding, to max_length, or not at all; pads use id 0.

        Returns:
            One encoding per text.

        Raises:
            ValueError: max_length is out of range, pairs do not match texts, or an input is longer
                than max_length with truncation off.
        """
        _check_max_length(max_length)
        if pairs is None:
            tokenizer = self._cached(max_length, padded=False) if truncation else self._plain
            encoded = [
                Encoding(e.ids, e.attention_mask, e.type_ids, e.offsets, e.tokens)
                for e in tokenizer.encode_batch(list(texts))
            ]
        else:
            encoded = self._encode_pairs(texts, pairs, max_length, truncation)
        _check_fits(max((len(e.input_ids) for e in encoded), default=0), max_length)
        return self.pad(encoded, padding, max_length)

    def pad(self, encodings: Sequence[Encoding], padding: Padding, max_length: int) -> list[Encoding]:
        """Pad the encodings of one call (e.g. encoded in parts with `Padding.NONE`) as `padding` asks.

        Args:
            encodings: encodings at most `max_length` long.
            padding: to the longest of them, to `max_length`, or not at all; pads use id 0.
            max_length: the call's max_length.

        Returns:
            The padded encodings.
        """
        longest = max((len(e.input_ids) for e in encodings), default=0)
        width = {Padding.LONGEST: longest, Padding.MAX_LENGTH: max_length, Padding.NONE: 0}[padding]
        return [self._padded(e, width) for e in encodings]

    def encode_arrays(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        truncation: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`encode` padded to the longest, as INT64 [N, L] ids, attention mask and token type ids.

        Single texts take a faster path that pads in `tokenizers` and builds no offsets or tokens.

        Raises:
            ValueError: as `encode`.
        """
        if pairs is not None:
            return to_arrays(self.encode(texts, pairs, max_length, truncation, Padding.LONGEST))
        _check_max_length(max_length)
        raw = self._cached(max_length if truncation else None, padded=True).encode_batch(list(texts))
        shape = (len(raw), len(raw[0].ids) if raw else 0)
        _check_fits(shape[1], max_length)
        ids = np.array([e.ids for e in raw], dtype=np.int64).reshape(shape)
        mask = np.array([e.attention_mask for e in raw], dtype=np.int64).reshape(shape)
        return ids, mask, np.zeros(shape, dtype=np.int64)

    def _encode_pairs(
        self, texts: Sequence[str], pairs: Sequence[str], max_length: int, truncation: bool
    ) -> list[Encoding]:
        if len(pairs) != len(texts):
            raise ValueError(f"{len(pairs)} text pairs for {len(texts)} texts; give one per text or none")
        budget = max_length - 3
        if budget < 0:
            raise ValueError(f"max_length must be at least 3 for text pairs, got {max_length}")
        firsts = self._plain.encode_batch(list(texts), add_special_tokens=False)
        seconds = self._plain.encode_batch(list(pairs), add_special_tokens=False)
        encoded = []
        for a, b in zip(firsts, seconds, strict=True):
            na, nb = len(a.ids), len(b.ids)
            if truncation:
                na, nb = truncate_pair(na, nb, budget)
            encoded.append(
                Encoding(
                    input_ids=[self._cls_id, *a.ids[:na], self._sep_id, *b.ids[:nb], self._sep_id],
                    attention_mask=[1] * (na + nb + 3),
                    token_type_ids=[0] * (na + 2) + [1] * (nb + 1),
                    offsets=[(0, 0), *a.offsets[:na], (0, 0), *b.offsets[:nb], (0, 0)],
                    tokens=[CLS_TOKEN, *a.tokens[:na], SEP_TOKEN, *b.tokens[:nb], SEP_TOKEN],
                )
            )
        return encoded

    def _padded(self, encoding: Encoding, width: int) -> Encoding:
        pad = width - len(encoding.input_ids)
        if pad <= 0:
            return encoding
        return Encoding(
            input_ids=encoding.input_ids + [self.pad_id] * pad,
            attention_mask=encoding.attention_mask + [0] * pad,
            token_type_ids=encoding.token_type_ids + [0] * pad,
            offsets=encoding.offsets + [(0, 0)] * pad,
            tokens=encoding.tokens + [PAD_TOKEN] * pad,
        )

    def decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """Turn id sequences back into text.

        Raises:
            ValueError: an id is outside the vocabulary.
        """
        for i, ids in enumerate(sequences):
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"sequence {i} has ids outside [0, {self.vocab_size}): {bad[:5]}")
        return self._plain.decode_batch([list(ids) for ids in sequences], skip_special_tokens=skip_special_tokens)


def _check_max_length(max_length: int) -> None:
    if not 2 <= max_length <= MAX_LENGTH_LIMIT:
        raise ValueError(f"max_length must be in [2, {MAX_LENGTH_LIMIT}], got {max_length}")


def _check_fits(longest: int, max_length: int) -> None:
    if longest > max_length:
        raise ValueError(f"an input has {longest} tokens, over max_length {max_length}, and truncation is off")


def truncate_pair(first: int, second: int, budget: int) -> tuple[int, int]:
    """Token counts kept of a pair so that together they fit `budget`, as BERT's `_truncate_seq_pair`
    does: drop from the longer one, and from the second on ties."""
    excess = first + second - budget
    if excess <= 0:
        return first, second
    if abs(first - second) >= excess:
        return (first - excess, second) if first > second else (first, second - excess)
    return (budget + 1) // 2, budget // 2


def to_arrays(encodings: Sequence[Encoding]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack equally long encodings into INT64 [N, L] ids, attention mask and token type ids."""
    width = len(encodings[0].input_ids) if encodings else 0
    shape = (len(encodings), width)
    ids = np.array([e.input_ids for e in encodings], dtype=np.int64).reshape(shape)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(shape)
    types = np.array([e.token_type_ids for e in encodings], dtype=np.int64).reshape(shape)
    return ids, mask, types
