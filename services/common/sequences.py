"""Models over token ids: INPUT_IDS and ATTENTION_MASK INT64 [N, L], checked and batched length-aware."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from maas.common.v1 import common_pb2
from services.common.codec import Tensor
from services.common.errors import InvalidInput, Overloaded
from services.common.model import Arrays, Batching, TensorSpec

MAX_SEQUENCE = 512
SEQUENCE_INPUTS = (TensorSpec("INPUT_IDS", "INT64", (-1, -1)), TensorSpec("ATTENTION_MASK", "INT64", (-1, -1)))
SEQUENCE_BATCHING = Batching(pad={"INPUT_IDS": 0, "ATTENTION_MASK": 0})
MAX_TEXTS = Field(256, ge=1, description="Sequences per request; more is RESOURCE_EXHAUSTED.")
"""The `max_texts` setting of a service of sequence models."""


def checked_sequences(inputs: Arrays, vocab_size: int, max_rows: int) -> Arrays:
    """Check ids and mask, and drop the padding columns no sequence uses.

    Args:
        inputs: INPUT_IDS and ATTENTION_MASK of one request (their dtypes and ranks already checked).
        vocab_size: ids must lie in [0, vocab_size).
        max_rows: most sequences per request.

    Returns:
        The ids and mask without trailing padding columns.

    Raises:
        InvalidInput: mismatched shapes, an empty batch, sequences over 512, ids outside the
            vocabulary, a mask that is not 0/1, or a row without tokens.
        Overloaded: more sequences than `max_rows`.
    """
    ids, mask = inputs["INPUT_IDS"], inputs["ATTENTION_MASK"]
    if ids.shape != mask.shape:
        raise InvalidInput(
            f"INPUT_IDS is {list(ids.shape)} but ATTENTION_MASK is {list(mask.shape)}; they must match",
            field="inputs[ATTENTION_MASK].shape",
        )
    rows, length = ids.shape
    if rows == 0 or length == 0:
        raise InvalidInput(f"empty batch: INPUT_IDS is {list(ids.shape)}", field="inputs[INPUT_IDS].shape")
    if rows > max_rows:
        raise Overloaded(f"{rows} sequences; the limit is {max_rows} per request", field="inputs[INPUT_IDS]")
    if length > MAX_SEQUENCE:
        raise InvalidInput(f"sequences of {length} tokens; at most {MAX_SEQUENCE}", field="inputs[INPUT_IDS].shape")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise InvalidInput(
            f"INPUT_IDS must lie in [0, {vocab_size}); got values from {low} to {high}", field="inputs[INPUT_IDS]"
        )
    if ((mask != 0) & (mask != 1)).any():
        raise InvalidInput("ATTENTION_MASK must hold only 0 and 1", field="inputs[ATTENTION_MASK]")
    used = mask.any(axis=0)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise InvalidInput(
            f"row {int(empty[0])} has no tokens: its ATTENTION_MASK is all 0", field="inputs[ATTENTION_MASK]"
        )
    width = int(np.flatnonzero(used)[-1]) + 1
    return {"INPUT_IDS": ids[:, :width], "ATTENTION_MASK": mask[:, :width]}


def padded(items: Sequence[common_pb2.TokenizedText], limit: int) -> dict[str, Tensor]:
    """Typed items as INPUT_IDS and ATTENTION_MASK tensors, padded with 0 to the longest.

    Lengths are checked before anything is allocated.

    Raises:
        InvalidInput: no items, an item over 512 tokens, or an item whose mask length differs from its ids'.
        Overloaded: more items than `limit`.
    """
    if len(items) > limit:
        raise Overloaded(f"{len(items)} items; the limit is {limit} per request", field="items")
    if not items:
        raise InvalidInput("no items in the request", field="items")
    lengths = [len(item.input_ids) for item in items]
    width = max(lengths)
    if width > MAX_SEQUENCE:
        raise InvalidInput(
            f"items[{lengths.index(width)}] has {width} tokens; at most {MAX_SEQUENCE}",
            field=f"items[{lengths.index(width)}].input_ids",
        )
    ids = np.zeros((len(items), width), dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for row, item in enumerate(items):
        count = len(item.input_ids)
        if item.attention_mask and len(item.attention_mask) != count:
            raise InvalidInput(
                f"items[{row}]: {len(item.attention_mask)} mask entries for {count} ids",
                field=f"items[{row}].attention_mask",
            )
        ids[row, :count] = item.input_ids
        mask[row, :count] = item.attention_mask or 1
    return {"INPUT_IDS": Tensor("INPUT_IDS", "INT64", ids), "ATTENTION_MASK": Tensor("ATTENTION_MASK", "INT64", mask)}
