"""Structured pruning of the vision CNN: whole channels and units leave, and the smaller network computes
what the larger one does when what left contributed nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from services.vision.model import multiply_adds
from services.vision.prune import prune_network
from tests.unit.test_vision_model import trained_like


@pytest.mark.parametrize("downsample", ["stride", "pool"])
def test_removing_silent_channels_and_units_keeps_every_output(downsample):
    network = trained_like(downsample)
    second = network.features[1][0]
    hidden, _ = (layer for layer in network.classifier if isinstance(layer, nn.Linear))
    with torch.no_grad():
        second.weight[[1, 3, 5, 7]] *= 1e-9
        network.features[1][1].bias[[1, 3, 5, 7]] = -100.0
        hidden.weight[::2] = 0
        hidden.bias[::2] = -1.0
    pruned, hyperparameters = prune_network(network, 0.5)
    assert hyperparameters["widths"] == [4, 4] and hyperparameters["hidden"] == 4
    assert [b[0].weight.shape for b in pruned.features] == [(4, 1, 3, 3), (4, 4, 3, 3)]
    images = torch.from_numpy(np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32))
    with torch.inference_mode():
        np.testing.assert_allclose(pruned(images).numpy(), network(images).numpy(), atol=1e-5)


def test_half_the_later_channels_and_units_remove_more_than_half_the_multiply_adds():
    _, pruned = prune_network(trained_like("stride"), 0.5)
    assert pruned["widths"] == [4, 4] and pruned["hidden"] == 4
    full = {"width": 16, "hidden": 128, "downsample": "stride"}
    half = {"widths": [16, 16], "hidden": 64, "downsample": "stride"}
    assert (multiply_adds(full), multiply_adds(half)) == (456_000, 191_936)
