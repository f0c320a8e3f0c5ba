"""Triton Python backend model for the peers benchmark: a maas model served by real Triton.

The benchmark copies this file into a Triton model repository as `<model>/1/model.py`; the model's
`config.pbtxt` names the maas version directory and the torch threads in its parameters. Triton's
dynamic batcher hands `execute` every request it gathered; they run as one batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from services.bench.peers.models import load, predict_batch


class TritonPythonModel:
    """Triton's initialize / execute over the project's model code."""

    def initialize(self, args: dict) -> None:
        """Load the version the config names, on the config's number of torch threads."""
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        torch.set_num_threads(int(parameters["threads"]))
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.predict = load(args["model_name"], Path(parameters["version_directory"]))

    def execute(self, requests: list) -> list:
        """One response per request, all requests run as one batch."""
        arrays = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            for request in requests
        ]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(name, array) for name, array in outputs.items()])
            for outputs in predict_batch(self.predict, arrays)
        ]
