"""Helpers shared by the typed `maas.*.v1` servicers."""

from __future__ import annotations

import numpy as np

from maas.common.v1 import common_pb2


def top_labels(probabilities: np.ndarray, labels: list[str], top_k: int) -> list[common_pb2.Classification]:
    """The `top_k` most probable labels of each row, most probable first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        common_pb2.Classification(
            labels=[common_pb2.Label(name=labels[i], index=int(i), probability=float(row[i])) for i in best]
        )
        for row, best in zip(probabilities, order, strict=True)
    ]
