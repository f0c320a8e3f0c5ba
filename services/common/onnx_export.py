"""Export a published torch version to ONNX and publish the graph as the model's next version.

The graph is exported with `torch.onnx` (the dynamo-based exporter, which writes the graph with
`onnxscript`), its batch and sequence dimensions dynamic, and checked with `onnx.checker`. Parity is
measured through the model class itself on both sides: the source version loaded as it is served on
torch, and the exported version loaded as it is served on ONNX Runtime, on the same test inputs. The
new version records the largest absolute difference of their outputs (and, for embeddings, the
smallest cosine between them), its own accuracy where the inputs are labelled, and the SHA-256 of
`model.onnx` like every version. Offline only: serving never imports this module.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from services.common.model import Arrays, SharedPool, Version
from services.common.onnx_runtime import ONNX_FILE, ONNXRUNTIME
from services.common.repository import (
    VersionConfig,
    is_torch_source,
    newest_source,
    publish_version,
    read_version,
    serve_beside,
)

OPSET = 18


@dataclass(frozen=True)
class Evaluation:
    """Inputs to measure parity on: batches of the model's inputs, and the class of every row if labelled.

    Attributes:
        batches: the model's inputs, batch by batch, as a request would send them.
        labels: the true class of each row across the batches, or None (embeddings).
        output: the output compared.
        cosine: also measure the cosine between the two sides' rows (embeddings).
    """

    batches: Sequence[Arrays]
    labels: np.ndarray | None
    output: str
    cosine: bool = False


def source_directory(repository: Path, model: str, version: int | None) -> Path:
    """The version to export: `version`, or the newest fp32 torch version.

    Raises:
        FileNotFoundError: no such version, or none to start from.
        ValueError: `version` is not an fp32 torch version.
    """
    if version is None:
        return newest_source(repository, model, f"train or export {model} first")
    directory = repository / model / str(version)
    if not directory.is_dir():
        raise FileNotFoundError(f"no {model} version {version} in {repository}")
    config = read_version(directory, model)
    if not is_torch_source(config):
        raise ValueError(
            f"{model} version {version} is not an fp32 torch version (platform {config.platform}, "
            f"quantization {config.quantization})"
        )
    return directory


def export_graph(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    path: Path,
) -> None:
    """Export `module` (in eval mode) to `path` and check the file with `onnx.checker`.

    Args:
        module: the network, taking the inputs in the order of `input_names`.
        example: example inputs to trace with.
        input_names: the graph's input names (the model's v2 input names).
        output_names: the graph's output names (the model's v2 output names).
        dynamic: input name -> {dimension: name} of the dimensions left dynamic (batch, sequence).
        path: where to write the `.onnx` file (weights inside it).

    Raises:
        onnx.checker.ValidationError: the exported graph is not valid ONNX.
    """
    named = {label: torch.export.Dim(label) for dims in dynamic.values() for label in dims.values()}
    dynamic_shapes = tuple({dim: named[label] for dim, label in dynamic.get(name, {}).items()} for name in input_names)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module.eval(),
            example,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.optimize()
        program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def publish_onnx(
    repository: Path,
    cls: type,
    settings: Any,
    source: Path,
    graph: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    dynamic: dict[str, dict[int, str]],
    evaluation: Evaluation,
    architecture: dict[str, Any] | None = None,
) -> Path:
    """Export `graph` (the source version's network with its pre- and post-processing) and publish it as
    the next version of the model, with `platform: onnxruntime` and its measured parity.

    Args:
        repository: repository root.
        cls: the served model class (loads the source on torch and the export on ONNX Runtime).
        settings: the service's settings (the limits its model class reads).
        source: the source version's directory.
        graph: the network to export; inputs and outputs named as the class's.
        example: example inputs for the exporter.
        dynamic: the dynamic dimensions of each input.
        evaluation: the inputs parity and accuracy are measured on.
        architecture: the new config's `architecture` (default: the source's).

    Returns:
        The new version's directory.
    """
    name = cls.name
    source_config = read_version(source, name)
    pool = SharedPool()
    reference = cls.load(Version(name, source, source_config, "cpu", settings, pool))
    prepare = getattr(reference, "prepare", lambda batch, _parameters: batch)
    batches = [prepare(batch, {}) for batch in evaluation.batches]
    torch_outputs = [reference.predict(batch)[evaluation.output] for batch in batches]
    config = source_config.model_copy(
        update={
            "platform": ONNXRUNTIME,
            "quantization": None,
            "architecture": architecture or source_config.architecture,
            "data": {
                **source_config.data,
                "exported_from": f"{name}/{source.name}",
                "exporter": f"torch.onnx (dynamo) {torch.__version__}, onnx {onnx.__version__}, opset {OPSET}",
            },
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {ONNX_FILE: ""},
        },
        deep=True,
    )

    def write(staging: Path) -> None:
        export_graph(
            graph, example, [s.name for s in cls.inputs], [s.name for s in cls.outputs], dynamic, staging / ONNX_FILE
        )
        exported = cls.load(Version(name, staging, config, "cpu", settings, SharedPool()))
        onnx_outputs = [exported.predict(batch)[evaluation.output] for batch in batches]
        config.metrics = parity_metrics(source_config, torch_outputs, onnx_outputs, evaluation)
        close = getattr(exported, "close", None)
        if close is not None:
            close()

    published = publish_version(repository, config, write)
    serve_beside(repository, name, source.name)
    return published


def parity_metrics(
    source: VersionConfig, torch_outputs: list[np.ndarray], onnx_outputs: list[np.ndarray], evaluation: Evaluation
) -> dict[str, float]:
    """What an exported version records: its parity with the source, and its accuracy where labelled.

    Returns:
        `max_abs_diff` (largest absolute difference of any output value), `parity_examples`,
        `source_test_accuracy` and `majority_baseline` (the source's, when it recorded them),
        `test_accuracy` and `test_examples` (labelled inputs), `cosine_to_source_min` (embeddings).
    """
    expected, actual = np.concatenate(torch_outputs), np.concatenate(onnx_outputs)
    metrics: dict[str, float] = {
        "max_abs_diff": float(np.abs(expected - actual).max()),
        "parity_examples": len(expected),
    }
    for kept in ("test_accuracy", "majority_baseline"):
        if kept in source.metrics:
            metrics["source_test_accuracy" if kept == "test_accuracy" else kept] = source.metrics[kept]
    if evaluation.cosine:
        cosines = (expected * actual).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1))
        metrics["cosine_to_source_min"] = float(cosines.min())
    if evaluation.labels is not None:
        predictions = actual.argmax(axis=1)
        metrics["test_accuracy"] = float((predictions == evaluation.labels).mean())
        metrics["test_examples"] = len(evaluation.labels)
        for key in source.metrics:
            if key.startswith("test_accuracy_first_"):
                first = int(key.rpartition("_")[2])
                if first <= len(predictions):
                    metrics[key] = float((predictions[:first] == evaluation.labels[:first]).mean())
    return metrics
