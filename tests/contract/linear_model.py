"""A tiny torch model served from a real repository, to test versions and batching end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from services.common.batched import serve_model
from services.common.errors import InvalidInput
from services.common.model import Arrays, Parameters, TensorSpec, Version
from services.common.repository import CONFIG_FILE, TensorConfig, VersionConfig, write_version
from services.common.settings import ModelServiceSettings
from services.common.torch_weights import load_weights, save_weights
from services.common.versions import ModelVersions

INPUTS = (TensorSpec("X", "FP32", (-1, 4)),)
OUTPUTS = (TensorSpec("Y", "FP32", (-1, 2)),)


class LinearModel:
    """Y = X W + b with W and b all equal to the version's `scale`; X must be finite."""

    name = "linear"
    platform = "pytorch_safetensors"
    inputs = INPUTS
    outputs = OUTPUTS

    def __init__(self, module: torch.nn.Linear) -> None:
        self.module = module

    @classmethod
    def load(cls, version: Version) -> LinearModel:
        module = torch.nn.Linear(version.config.architecture["in_features"], 2)
        load_weights(module, version.directory / "model.safetensors")
        return cls(module)

    def prepare(self, inputs: Arrays, parameters: Parameters) -> Arrays:
        if not np.isfinite(inputs["X"]).all():
            raise InvalidInput("X must be finite")
        return inputs

    def predict(self, batch: Arrays) -> Arrays:
        with torch.no_grad():
            return {"Y": self.module(torch.from_numpy(batch["X"])).numpy()}


def linear(repository: Path, max_batch_size: int = 16, max_queue_delay_ms: float = 5) -> ModelVersions:
    """`LinearModel` served from `repository`, batching up to 16 rows with a 5 ms queue delay by default."""
    settings = ModelServiceSettings(
        model_repository=repository, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms
    )
    return serve_model(LinearModel, settings)


def make_version(repository: Path, version: int, scale: float, in_features: int = 4, **config_changes) -> Path:
    """Write `<repository>/linear/<version>/`: weights of a Linear(in_features, 2) and a config saying 4.

    `config_changes` overwrite fields of the written config.json (to make it disagree on purpose).
    """
    directory = repository / "linear" / str(version)
    directory.mkdir(parents=True)
    module = torch.nn.Linear(in_features, 2)
    torch.nn.init.constant_(module.weight, scale)
    torch.nn.init.constant_(module.bias, scale)
    save_weights(module, directory / "model.safetensors")
    config = VersionConfig(
        name="linear",
        version=version,
        platform=LinearModel.platform,
        architecture={"in_features": 4},
        inputs=[TensorConfig.of(s) for s in INPUTS],
        outputs=[TensorConfig.of(s) for s in OUTPUTS],
        metrics={"scale": scale},
        data={"source": "made in the test"},
        files={"model.safetensors": ""},
    )
    write_version(directory, config)
    if config_changes:
        path = directory / CONFIG_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), **config_changes}))
    return directory
