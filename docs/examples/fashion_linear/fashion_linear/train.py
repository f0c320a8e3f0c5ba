"""Fit the model on Fashion-MNIST and publish it as the next version in a maas model repository.

Usage: `python -m fashion_linear.train REPOSITORY [--epochs N] [--train-limit N]` (Fashion-MNIST from the
Debian package `dataset-fashion-mnist`, or the directory `FASHION_MNIST` or `--data-dir` names).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from fashion_linear.model import CLASSES, PIXELS, WEIGHTS_FILE, SoftmaxRegression
from services.common.repository import TensorConfig, VersionConfig, publish_version

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def load_split(split: str, data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 [N, 784] in [0, 1] and labels as int64 [N] (idx files: images at byte 16, labels at 8)."""
    image_file, label_file = SPLITS[split]
    images = np.frombuffer(gzip.decompress((data_dir / image_file).read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((data_dir / label_file).read_bytes()), np.uint8, offset=8)
    return images.reshape(-1, PIXELS).astype(np.float32) / 255.0, labels.astype(np.int64)


def fit(
    images: np.ndarray, labels: np.ndarray, epochs: int = 3, learning_rate: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression by minibatch gradient descent on cross-entropy.

    Returns:
        Weights [784, 10] and bias [10].
    """
    generator = np.random.default_rng(seed)
    weights = np.zeros((PIXELS, CLASSES), np.float32)
    bias = np.zeros(CLASSES, np.float32)
    onehot = np.eye(CLASSES, dtype=np.float32)[labels]
    for _ in range(epochs):
        order = generator.permutation(len(images))
        for start in range(0, len(order), 128):
            rows = order[start : start + 128]
            model = SoftmaxRegression(weights, bias)
            error = model.predict({"IMAGE": images[rows]})["PROBABILITIES"] - onehot[rows]
            weights -= learning_rate * images[rows].T @ error / len(rows)
            bias -= learning_rate * error.mean(axis=0)
    return weights, bias


def accuracy(weights: np.ndarray, bias: np.ndarray, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy."""
    probabilities = SoftmaxRegression(weights, bias).predict({"IMAGE": images})["PROBABILITIES"]
    return float((probabilities.argmax(axis=1) == labels).mean())


def train(repository: Path, epochs: int = 3, train_limit: int = 0, seed: int = 0, data_dir: Path = DATA_DIR) -> Path:
    """Fit on the training split (its first `train_limit` images, if set), measure on the test split, and
    publish the weights as the next version of `fashion-linear`.

    Returns:
        The new version's directory.
    """
    images, labels = load_split("train", data_dir)
    if train_limit:
        images, labels = images[:train_limit], labels[:train_limit]
    weights, bias = fit(images, labels, epochs, seed=seed)
    test_images, test_labels = load_split("test", data_dir)
    config = VersionConfig(
        name=SoftmaxRegression.name,
        version=1,
        platform=SoftmaxRegression.platform,
        inputs=[TensorConfig.of(spec) for spec in SoftmaxRegression.inputs],
        outputs=[TensorConfig.of(spec) for spec in SoftmaxRegression.outputs],
        labels=list(LABELS),
        metrics={"test_accuracy": accuracy(weights, bias, test_images, test_labels)},
        data={
            "source": "Fashion-MNIST (Debian dataset-fashion-mnist)",
            "train_examples": len(labels),
            "epochs": epochs,
        },
        files={WEIGHTS_FILE: ""},
    )
    return publish_version(
        repository,
        config,
        lambda directory: save_file({"weights": weights, "bias": bias}, str(directory / WEIGHTS_FILE)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FASHION_MNIST") or DATA_DIR))
    args = parser.parse_args()
    directory = train(args.repository, args.epochs, args.train_limit, data_dir=args.data_dir)
    sys.stdout.write(f"published {directory}\n")


if __name__ == "__main__":
    main()
