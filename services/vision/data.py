"""Fashion-MNIST from its idx files (Debian package `dataset-fashion-mnist`, or any directory holding them)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "FASHION_MNIST"
LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def fashion_mnist_dir() -> Path:
    """Where the idx files are: the directory `FASHION_MNIST` names, else where Debian's package puts them."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _read(path: Path, magic: int, offset: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        files = ", ".join(name for pair in FILES.values() for name in pair)
        raise FileNotFoundError(
            f"Fashion-MNIST: {path} not found. Install the Debian package dataset-fashion-mnist (it puts the "
            f"files in {DEFAULT_DATA_DIR}), or name a directory holding {files} with {DATA_DIR_ENV}=DIR "
            "(make up FASHION_MNIST=DIR) or maas train vision --data-dir DIR"
        ) from None
    if int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path} is not an idx file (magic {int.from_bytes(raw[:4], 'big')}, expected {magic})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset)


def load_split(split: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one split.

    Args:
        split: `train` or `test`.
        data_dir: the directory holding the idx files (default: `fashion_mnist_dir()`).

    Returns:
        Images as float32 [N, 1, 28, 28] in [0, 1], and labels as int64 [N].

    Raises:
        FileNotFoundError: the idx files are not in `data_dir`.
        ValueError: a file is not an idx file or images and labels disagree in count.
    """
    image_file, label_file = FILES[split]
    data_dir = data_dir or fashion_mnist_dir()
    images = _read(data_dir / image_file, IMAGE_MAGIC, 16)
    labels = _read(data_dir / label_file, LABEL_MAGIC, 8).astype(np.int64)
    if images.size != labels.size * 28 * 28:
        raise ValueError(f"{data_dir}: {images.size // 784} images but {labels.size} labels in the {split} split")
    return (images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0), labels
