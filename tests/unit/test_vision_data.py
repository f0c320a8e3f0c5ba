"""Where Fashion-MNIST is read from: `FASHION_MNIST`, else Debian's location, and what a missing file says."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.vision.data import DEFAULT_DATA_DIR, FILES, load_split


def test_fashion_mnist_names_the_directory_the_idx_files_are_read_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in FILES["test"]:
        (tmp_path / name).symlink_to(DEFAULT_DATA_DIR / name)
    monkeypatch.setenv("FASHION_MNIST", str(tmp_path))
    images, labels = load_split("test")
    assert images.shape == (10_000, 1, 28, 28) and labels.shape == (10_000,)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz not found"):
        load_split("train")


def test_a_missing_directory_says_how_to_name_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as missing:
        load_split("test")
    message = str(missing.value)
    assert str(tmp_path / "nowhere" / "t10k-images-idx3-ubyte.gz") in message
    assert "dataset-fashion-mnist" in message and "make up FASHION_MNIST=DIR" in message and "--data-dir" in message
