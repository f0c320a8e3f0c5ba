"""The vision CNN in process: the folded, channels-last inference plan computes what the trained network does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.repository import RepositoryError
from services.common.torch_weights import save_weights
from services.vision.model import WEIGHTS_FILE, FashionCNN, FoldedCNN, build


def trained_like(downsample: str) -> FashionCNN:
    """A network with random weights and batch-norm statistics away from their defaults, as training leaves them."""
    torch.manual_seed(0)
    network = FashionCNN(width=4, hidden=8, downsample=downsample)
    for block in network.features:
        norm = block[1]
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    return network.eval()


@pytest.mark.parametrize("downsample", ["stride", "pool"])
def test_the_inference_plan_matches_the_network_at_batch_1_and_32(tmp_path, downsample):
    network = trained_like(downsample)
    save_weights(network, tmp_path / WEIGHTS_FILE)
    folded = FoldedCNN(tmp_path, {"width": 4, "hidden": 8, "downsample": downsample})
    images = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        expected = torch.softmax(network(torch.from_numpy(images)), dim=1).numpy()
    np.testing.assert_allclose(folded(images), expected, atol=1e-6)
    np.testing.assert_allclose(folded(images[:1]), expected[:1], atol=1e-6)


def test_versions_recorded_before_the_downsample_setting_load_as_pooled(tmp_path):
    network = trained_like("pool")
    save_weights(network, tmp_path / WEIGHTS_FILE)
    images = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        expected = torch.softmax(network(torch.from_numpy(images)), dim=1).numpy()
    np.testing.assert_allclose(FoldedCNN(tmp_path, {"width": 4, "hidden": 8})(images), expected, atol=1e-6)


def test_an_unknown_downsample_is_refused_as_a_repository_error():
    with pytest.raises(RepositoryError, match="downsample must be one of stride, pool"):
        build({"downsample": "average"})
