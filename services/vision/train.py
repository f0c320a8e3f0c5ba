"""`maas train vision`: the Fashion-MNIST CNN, trained here, written as the repository's next version."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from services.common.repository import TensorConfig, VersionConfig, publish_version, read_version
from services.common.torch_weights import load_weights, save_weights
from services.vision.data import DEFAULT_DATA_DIR, LABELS, load_split
from services.vision.model import ARCHITECTURE, WEIGHTS_FILE, build
from services.vision.recipe import Recipe
from services.vision.spec import INPUTS, MODEL_NAME, OUTPUTS, PLATFORM


def evaluate(network: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `network` on a labelled set."""
    network.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = network(torch.from_numpy(images[start : start + batch_size]))
            correct += int((logits.argmax(1).numpy() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def fit(
    network: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    recipe: Recipe,
    generator: np.random.Generator,
    progress: bool,
) -> None:
    """Train `network` in place: AdamW with a one-cycle schedule over `recipe.epochs`, random horizontal flips.

    Args:
        network: the network to train.
        train_images: float32 images [N, 1, 28, 28] in [0, 1].
        train_labels: their classes [N].
        recipe: epochs, batch size, peak learning rate and weight decay.
        generator: shuffles and flips.
        progress: show a progress bar on stderr.
    """
    optimizer = torch.optim.AdamW(network.parameters(), lr=recipe.max_learning_rate, weight_decay=recipe.weight_decay)
    steps = -(-len(train_images) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.max_learning_rate, total_steps=recipe.epochs * steps
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(recipe.epochs):
        network.train()
        order = generator.permutation(len(train_images))
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress, unit="batch")
        for step in bar:
            index = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            images = torch.from_numpy(train_images[index])
            flip = torch.from_numpy(generator.random(len(index)) < 0.5)
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
            loss = loss_fn(network(images), torch.from_numpy(train_labels[index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")


def train(recipe: Recipe, repository: Path, data_dir: Path = DEFAULT_DATA_DIR, progress: bool = True) -> Path:
    """Train the CNN, evaluate it on the 10k test set, and publish it as the next version.

    Args:
        recipe: hyperparameters and seed; `train_limit` > 0 trains on that many images only (tests).
        repository: model repository root.
        data_dir: directory holding the Fashion-MNIST idx files.
        progress: show a progress bar on stderr.

    Returns:
        The new version's directory.
    """
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    generator = np.random.default_rng(recipe.seed)
    train_images, train_labels = load_split("train", data_dir)
    test_images, test_labels = load_split("test", data_dir)
    if recipe.train_limit:
        train_images, train_labels = train_images[: recipe.train_limit], train_labels[: recipe.train_limit]
    network = build(recipe.hyperparameters)
    started = time.perf_counter()
    fit(network, train_images, train_labels, recipe, generator, progress)
    seconds = time.perf_counter() - started
    accuracy = evaluate(network, test_images, test_labels)
    config = VersionConfig(
        name=MODEL_NAME,
        version=1,
        platform=PLATFORM,
        architecture={"name": ARCHITECTURE, "hyperparameters": recipe.hyperparameters},
        inputs=[TensorConfig.of(spec).model_copy(update={"range": (0.0, 1.0)}) for spec in INPUTS],
        outputs=[TensorConfig.of(spec) for spec in OUTPUTS],
        labels=list(LABELS),
        metrics={"test_accuracy": accuracy, "train_seconds": round(seconds, 1), "test_examples": len(test_labels)},
        data={
            "source": "Fashion-MNIST, Debian package dataset-fashion-mnist",
            "train_examples": len(train_labels),
            "recipe": asdict(recipe),
            "torch": torch.__version__,
        },
        files={WEIGHTS_FILE: ""},
    )
    return publish_version(repository, config, lambda directory: save_weights(network, directory / WEIGHTS_FILE))


def export_onnx(
    repository: Path, version: int | None = None, data_dir: Path = DEFAULT_DATA_DIR, test_limit: int = 0
) -> Path:
    """Export a published CNN (`version`, or the newest fp32 torch one) to ONNX and publish it as the next
    version on ONNX Runtime, with its parity and accuracy on the test images.

    Args:
        repository: model repository root.
        version: the version to export; None: the newest fp32 torch version.
        data_dir: directory holding the Fashion-MNIST idx files.
        test_limit: measure on this many test images only (0: all 10,000).

    Returns:
        The new version's directory.

    Raises:
        FileNotFoundError: no such version, or none to export.
        ValueError: `version` is not an fp32 torch version.
    """
    from services.common.onnx_export import Evaluation, publish_onnx, source_directory
    from services.vision.model import Classifier
    from services.vision.spec import VisionSettings

    source = source_directory(repository, MODEL_NAME, version)
    config = read_version(source, MODEL_NAME)
    network = load_weights(build(config.architecture.get("hyperparameters", {})), source / WEIGHTS_FILE)
    images, labels = load_split("test", data_dir)
    if test_limit:
        images, labels = images[:test_limit], labels[:test_limit]
    batches = [{"IMAGE": images[start : start + 500]} for start in range(0, len(images), 500)]
    return publish_onnx(
        repository,
        Classifier,
        VisionSettings(model_repository=repository),
        source,
        nn.Sequential(network, nn.Softmax(dim=1)),
        (torch.from_numpy(images[:2]),),
        {"IMAGE": {0: "batch"}},
        Evaluation(batches, labels, "PROBABILITIES"),
    )
