"""Models over token ids: INPUT_IDS and ATTENTION_MASK INT64 [N, L], checked and batched length-aware."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maas.common.v1 import common_pb2
from services.common.batched import BatchedModel
from services.common.batcher import Arrays
from services.common.codec import Tensor
from services.common.errors import InvalidInput, Overloaded
from services.common.models import InferRequest, TensorSpec
from services.common.repository import VersionConfig
from services.common.settings import SequenceSettings
from services.common.typed import top_labels

MAX_SEQUENCE = 512
SEQUENCE_INPUTS = (TensorSpec("INPUT_IDS", "INT64", (-1, -1)), TensorSpec("ATTENTION_MASK", "INT64", (-1, -1)))
PAD = {"INPUT_IDS": 0, "ATTENTION_MASK": 0}


class SequenceModel(BatchedModel):
    """A model over INPUT_IDS and ATTENTION_MASK INT64 [N, L], batched length-aware.

    Subclasses record each loaded version's vocabulary size in `vocab_sizes` when they build it.
    """

    inputs = SEQUENCE_INPUTS

    def __init__(self, repository: Path, settings: SequenceSettings) -> None:
        batching = settings.batching(
            pad=PAD,
            length_aware=settings.length_aware,
            fixed_length=settings.fixed_length,
            max_batch_tokens=settings.max_batch_tokens,
        )
        super().__init__(repository, batching)
        self.max_rows = settings.max_texts
        self.vocab_sizes: dict[str, int] = {}

    async def release_version(self, version: str, loaded: Any) -> None:
        """Also forget the unloaded version's vocabulary size."""
        await super().release_version(version, loaded)
        self.vocab_sizes.pop(version, None)

    async def classify(
        self, items: Sequence[common_pb2.TokenizedText], top_k: int, model_version: str
    ) -> tuple[list[common_pb2.Classification], str]:
        """A typed ClassifyText on token ids: every item's top `top_k` labels (0: all) and the version used.

        Raises:
            InvalidInput / Overloaded: as `padded` and `prepare`.
            ModelNotFound: `model_version` is not loaded.
        """
        version = self.resolve(model_version)
        self.admit(version)
        inputs = padded(items, self.max_rows)
        result = await self.infer(InferRequest(inputs, version))
        labels = self.configs[version].labels
        return top_labels(result.outputs[0].array, labels, min(top_k or len(labels), len(labels))), version

    def prepare(self, inputs: Arrays, config: VersionConfig) -> Arrays:
        """Check ids and mask, and drop the padding columns no sequence uses.

        Raises:
            InvalidInput: mismatched shapes, an empty batch, sequences over 512, ids outside the
                vocabulary, a mask that is not 0/1, or a row without tokens.
            Overloaded: more sequences than the per-request limit.
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
        if rows > self.max_rows:
            raise Overloaded(f"{rows} sequences; the limit is {self.max_rows} per request", field="inputs[INPUT_IDS]")
        if length > MAX_SEQUENCE:
            raise InvalidInput(f"sequences of {length} tokens; at most {MAX_SEQUENCE}", field="inputs[INPUT_IDS].shape")
        vocab = self.vocab_sizes[str(config.version)]
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            raise InvalidInput(
                f"INPUT_IDS must lie in [0, {vocab}); got values from {low} to {high}", field="inputs[INPUT_IDS]"
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
