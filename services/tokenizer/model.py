"""BERT WordPiece tokenization with HF `tokenizers` over MiniLM's vocabulary: the served model
`tokenizer`. No torch, no gRPC.

Loads only `tokenizer.json` from a repository version directory. The file ships with padding and
truncation baked in (128); both are switched off here and applied per call instead, so every
request can choose its own max_length.

Text pairs are truncated as BERT's reference implementation does (`_truncate_seq_pair`: drop from
the longer, from the second on ties), which differs from `tokenizers`' longest-first on odd budgets.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tokenizers import Tokenizer

from services.common.errors import InvalidInput, Overloaded
from services.common.model import Arrays, Parameters, Version
from services.common.repository import newest_version
from services.tokenizer.spec import INPUTS, MAKE, MODEL_NAME, OUTPUTS, PLATFORM

TOKENIZER_FILE = "tokenizer.json"
MAX_LENGTH_LIMIT = 512
DEFAULT_MAX_LENGTH = 256
PAD_TOKEN = "[PAD]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
TRUNCATING_TOKENIZERS_CACHED = 8
T = TypeVar("T")


class TextLimits(Protocol):
    """Limits on the texts of one request."""

    max_texts: int
    max_text_bytes: int
    max_request_bytes: int


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
    """v2 model `tokenizer`: TEXT (+ TEXT_PAIR) BYTES [N] -> INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS INT64 [N, L].

    Request parameters: `max_length` (default from settings, at most 512), `truncation` (default true).
    Sequences are padded with id 0 to the longest in the request. Requests are not batched together:
    each is tokenized as it comes (`tokenizers` batches the texts of one request itself).
    """

    name = MODEL_NAME
    platform = PLATFORM
    inputs = INPUTS
    outputs = OUTPUTS
    batching = None

    def __init__(
        self,
        directory: Path,
        max_texts: int = 1024,
        max_text_bytes: int = 100_000,
        default_max_length: int = DEFAULT_MAX_LENGTH,
        max_request_bytes: int = 1 << 20,
    ) -> None:
        """Load `tokenizer.json` from `directory`.

        Args:
            directory: the version's directory.
            max_texts: texts per request; more is refused.
            max_text_bytes: UTF-8 bytes per text; more is refused.
            default_max_length: tokens per sequence when a request names none.
            max_request_bytes: UTF-8 bytes of all texts (and pairs) per request; more is refused.

        Raises:
            OSError: the file cannot be read.
            Exception: `tokenizers` cannot parse it.
        """
        self.directory = directory
        self.max_texts = max_texts
        self.max_text_bytes = max_text_bytes
        self.default_max_length = default_max_length
        self.max_request_bytes = max_request_bytes
        self._json = (directory / TOKENIZER_FILE).read_text(encoding="utf-8")
        self._plain = self._configured(None)
        self.vocab_size = self._plain.get_vocab_size()
        self.pad_id = self._plain.token_to_id(PAD_TOKEN)
        self._cls_id = self._plain.token_to_id(CLS_TOKEN)
        self._sep_id = self._plain.token_to_id(SEP_TOKEN)
        self._cached = lru_cache(maxsize=TRUNCATING_TOKENIZERS_CACHED)(self._configured)

    @classmethod
    def load(cls, version: Version) -> WordPieceTokenizer:
        """The version's tokenizer, with the service's text limits."""
        settings = version.settings
        return cls(
            version.directory,
            settings.max_texts,
            settings.max_text_bytes,
            settings.default_max_length,
            settings.max_request_bytes,
        )

    def prepare(self, inputs: dict[str, Any], parameters: Parameters) -> dict[str, Any]:
        """Check the texts against the limits and decode them; read `max_length` and `truncation`.

        Raises:
            InvalidInput: a text is not UTF-8, TEXT_PAIR does not match TEXT, or a parameter is invalid.
            Overloaded: too many texts, a text over the byte limit, or more bytes in all than the request limit.
        """
        texts = inputs["TEXT"]
        pairs = inputs.get("TEXT_PAIR")
        text_costs(self, ("TEXT", texts), None if pairs is None else ("TEXT_PAIR", pairs))
        if pairs is not None:
            pairs = decode_utf8("TEXT_PAIR", pairs)
        max_length = check_max_length(parameters.get("max_length", self.default_max_length))
        truncation = parameters.get("truncation", True)
        if not isinstance(truncation, bool):
            raise InvalidInput(
                f"parameter 'truncation' must be a bool, got {truncation!r}", field="parameters.truncation"
            )
        return {
            "TEXT": decode_utf8("TEXT", texts),
            "TEXT_PAIR": pairs,
            "max_length": max_length,
            "truncation": truncation,
        }

    def predict(self, request: dict[str, Any]) -> Arrays:
        """Token ids, attention mask and token type ids of a prepared request, padded to its longest.

        Raises:
            InvalidInput: an input is longer than max_length with truncation off.
        """
        ids, mask, types = invalid_on_value_error(
            self.encode_arrays, request["TEXT"], request["TEXT_PAIR"], request["max_length"], request["truncation"]
        )
        return {"INPUT_IDS": ids, "ATTENTION_MASK": mask, "TOKEN_TYPE_IDS": types}

    def _configured(self, max_length: int | None) -> Tokenizer:
        tokenizer = Tokenizer.from_str(self._json)
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
            tokenizer = self._cached(max_length) if truncation else self._plain
            encoded = [
                Encoding(e.ids, e.attention_mask, e.type_ids, e.offsets, e.tokens)
                for e in tokenizer.encode_batch(list(texts))
            ]
        else:
            encoded = self._encode_pairs(texts, pairs, max_length, truncation)
        longest = max((len(e.input_ids) for e in encoded), default=0)
        _check_fits(longest, max_length)
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

        Single texts take a faster path that computes no offsets (`encode_batch_fast`), and writes each row's ids
        into the arrays as it goes: only the ids become Python objects on the way (`tokenizers` hands
        them out as lists), not the masks or the padding, and no list of every row is held at once.

        Raises:
            ValueError: as `encode`.
        """
        if pairs is not None:
            return to_arrays(self.encode(texts, pairs, max_length, truncation, Padding.LONGEST))
        _check_max_length(max_length)
        raw = (self._cached(max_length) if truncation else self._plain).encode_batch_fast(list(texts))
        lengths = [len(encoding) for encoding in raw]
        width = max(lengths, default=0)
        _check_fits(width, max_length)
        ids = np.full((len(raw), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(raw), width), dtype=np.int64)
        for row, (encoding, length) in enumerate(zip(raw, lengths, strict=True)):
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
        return ids, mask, np.zeros_like(ids)

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


def newest_tokenizer(repository: Path) -> WordPieceTokenizer:
    """The repository's newest tokenizer version.

    Raises:
        FileNotFoundError: the repository has no tokenizer (the message says how to export one).
    """
    return WordPieceTokenizer(newest_version(repository, MODEL_NAME, f"run `{MAKE}`"))


def check_texts(field: str, texts: Sequence[str | bytes], limits: TextLimits) -> list[int]:
    """Refuse too many texts, or a text over the byte limit.

    Returns:
        Each text's size in UTF-8 bytes.

    Raises:
        Overloaded: too many texts, or a text over the byte limit.
    """
    if len(texts) > limits.max_texts:
        raise Overloaded(f"{field} has {len(texts)} texts; the limit is {limits.max_texts} per request", field=field)
    sizes = [len(text.encode()) if isinstance(text, str) else len(text) for text in texts]
    for i, size in enumerate(sizes):
        if size > limits.max_text_bytes:
            raise Overloaded(
                f"{field}[{i}] is {size} bytes; the limit is {limits.max_text_bytes} per text", field=f"{field}[{i}]"
            )
    return sizes


def text_costs(
    limits: TextLimits, texts: tuple[str, Sequence[str | bytes]], pairs: tuple[str, Sequence[str | bytes]] | None
) -> list[int]:
    """Check a request's texts (and second texts) against the limits, before any of them is tokenized.

    Args:
        limits: the limits.
        texts: the texts' field name and the texts.
        pairs: the second texts' field name and the second texts, or None.

    Returns:
        Each text's size in UTF-8 bytes, with its second text's.

    Raises:
        InvalidInput: second texts given, but not one per text.
        Overloaded: as `check_texts`, or more bytes in all than the request limit.
    """
    costs = check_texts(*texts, limits)
    if pairs is not None:
        if len(pairs[1]) != len(costs):
            raise InvalidInput(
                f"{pairs[0]} has {len(pairs[1])} elements for {len(costs)} in {texts[0]}; give one per text",
                field=pairs[0],
            )
        costs = [a + b for a, b in zip(costs, check_texts(*pairs, limits), strict=True)]
    if sum(costs) > limits.max_request_bytes:
        raise Overloaded(
            f"the texts hold {sum(costs)} bytes in all; the limit is {limits.max_request_bytes} per request",
            field=texts[0],
        )
    return costs


def check_max_length(value: Any) -> int:
    """Validate a requested max_length.

    Raises:
        InvalidInput: outside [2, 512].
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_LENGTH_LIMIT:
        raise InvalidInput(
            f"max_length must be an integer in [2, {MAX_LENGTH_LIMIT}], got {value!r}", field="max_length"
        )
    return value


def decode_utf8(field: str, items: np.ndarray) -> list[str]:
    """Decode a BYTES tensor's elements as UTF-8.

    Raises:
        InvalidInput: an element is not valid UTF-8.
    """
    texts = []
    for i, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{field}[{i}] is not valid UTF-8: byte 0x{item[exc.start]:02x} at offset {exc.start}",
                field=f"{field}[{i}]",
            ) from None
    return texts


def invalid_on_value_error(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn`, turning its ValueError into INVALID_ARGUMENT."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="inputs") from None
