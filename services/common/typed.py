"""Helpers shared by the typed `maas.*.v1` servicers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maas.common.v1 import common_pb2
from services.common.sequences import padded
from services.common.versions import ModelVersions


def top_labels(probabilities: np.ndarray, labels: list[str], top_k: int) -> list[common_pb2.Classification]:
    """The `top_k` most probable labels of each row, most probable first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        common_pb2.Classification(
            labels=[common_pb2.Label(name=labels[i], index=int(i), probability=float(row[i])) for i in best]
        )
        for row, best in zip(probabilities, order, strict=True)
    ]


async def classify(
    model: ModelVersions, items: Sequence[common_pb2.TokenizedText], top_k: int, version: str, max_items: int
) -> tuple[list[common_pb2.Classification], str]:
    """A typed ClassifyText on token ids: every item's top `top_k` labels (0: all) and the version used.

    Args:
        model: a sequence model answering PROBABILITIES over its config's labels.
        items: the request's token ids.
        top_k: labels per item (0: all).
        version: the version asked for ("" = the default).
        max_items: most items per request.

    Raises:
        InvalidInput / Overloaded: as `padded` and the model's `prepare`; Overloaded also when the
            version's queue is full (refused before the items are read).
        ModelNotFound: `version` is not loaded.
    """
    loaded = model.get(version)
    if loaded.admit is not None:
        loaded.admit()
    inputs = padded(items, max_items)
    result = await loaded.infer(inputs, {})
    labels = loaded.config.labels
    return top_labels(result.outputs[0].array, labels, min(top_k or len(labels), len(labels))), loaded.version
