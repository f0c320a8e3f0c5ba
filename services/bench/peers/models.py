"""The models every system in the peers benchmark serves, as numpy functions built by the project's own
model code from the same repository version: Triton's Python backend, KServe and Ray Serve run these
exactly as the maas services and the in-process row do.

Importable in the peers' venvs: numpy, torch and the project's pure model modules only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.common.repository import read_version
from services.transformer.spec import EMBED_MODEL
from services.vision.spec import MODEL_NAME as VISION

Arrays = dict[str, np.ndarray]
Predict = Callable[[Arrays], Arrays]
MODELS = (VISION, EMBED_MODEL)
SEQUENCE_INPUTS = ("INPUT_IDS", "ATTENTION_MASK")
"""Inputs whose second dimension is a sequence: padded with 0 to the longest when requests are batched."""


def load(model: str, directory: Path) -> Predict:
    """The predict function of one version: input name -> array, batch first, to output name -> array.

    Args:
        model: `fashion_cnn` or `minilm_embed`.
        directory: the version's directory.

    Raises:
        ValueError: another model.
    """
    config = read_version(directory, model)
    if model == VISION:
        from services.vision.model import FoldedCNN

        network = FoldedCNN(directory, config.architecture["hyperparameters"])
        return lambda inputs: {"PROBABILITIES": network(inputs["IMAGE"])}
    if model == EMBED_MODEL:
        from services.transformer.model import Encoder

        encoder = Encoder(directory, config.architecture["bert"], config.quantization)
        return lambda inputs: {"EMBEDDING": encoder.embed(inputs["INPUT_IDS"], inputs["ATTENTION_MASK"])}
    raise ValueError(f"the peers benchmark serves {', '.join(MODELS)}, not {model!r}")


def predict_batch(predict: Predict, requests: list[Arrays]) -> list[Arrays]:
    """Run several requests as one batch (sequences padded with 0 to the longest) and split the outputs.

    Args:
        predict: from `load`.
        requests: each request's inputs, rows first.

    Returns:
        Each request's rows of every output, in order.
    """
    width = max((r[name].shape[1] for r in requests for name in SEQUENCE_INPUTS if name in r), default=0)

    def padded(name: str, array: np.ndarray) -> np.ndarray:
        if name not in SEQUENCE_INPUTS or array.shape[1] == width:
            return array
        return np.pad(array, [(0, 0), (0, width - array.shape[1])])

    batch = {name: np.concatenate([padded(name, r[name]) for r in requests]) for name in requests[0]}
    outputs = predict(batch)
    answers, offset = [], 0
    for request in requests:
        rows = len(next(iter(request.values())))
        answers.append({name: array[offset : offset + rows] for name, array in outputs.items()})
        offset += rows
    return answers
