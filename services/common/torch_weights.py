"""Torch weights in safetensors: saved and loaded without ever unpickling anything."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from services.common.repository import RepositoryError

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Write a module's state dict as safetensors."""
    save_file({name: tensor.detach().contiguous() for name, tensor in module.state_dict().items()}, str(path))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file.

    Raises:
        RepositoryError: the file is not safetensors.
    """
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RepositoryError(f"{path}: not a readable safetensors file ({exc})") from None


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """Put `state` into `module`, refusing any mismatch with its architecture. The tensors are taken
    as they are (`assign`), so a module built on the `meta` device loads without being initialised first.

    Args:
        module: the architecture (on any device, `meta` included).
        state: the tensors read from `path`, named as the module's state dict.
        path: the file they came from (named in errors).

    Returns:
        The module, in eval mode.

    Raises:
        RepositoryError: the tensors' names or shapes differ from the module's (the config describes
            another architecture than the weights hold).
    """
    expected = module.state_dict()
    problems = [f"missing {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"unexpected {k}" for k in sorted(set(state) - set(expected))]
    problems += [
        f"{k} is {list(state[k].shape)} in the file but {list(v.shape)} in the architecture"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise RepositoryError(f"{path} does not match the architecture in config.json: {'; '.join(problems[:6])}")
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def load_weights(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load safetensors into `module`, refusing any mismatch with its architecture (see `load_state`).

    Returns:
        The module, in eval mode.

    Raises:
        RepositoryError: the file is not safetensors, or does not match the module.
    """
    return load_state(module, read_weights(path), path)


DYNAMIC_INT8 = "dynamic_int8"
QUANTIZATION_SCHEMES = (DYNAMIC_INT8,)


def quantize(module: torch.nn.Module, scheme: str | None) -> torch.nn.Module:
    """Apply a version's quantization scheme to its loaded fp32 module (weights stay fp32 on disk).

    `dynamic_int8`: torch's dynamic quantization of every LSTM and Linear layer: int8 weights (one
    scale per output channel for Linear layers, per weight tensor for LSTMs), activations quantized
    per batch at run time; embeddings and everything else stay fp32.

    Args:
        module: the loaded module, in eval mode.
        scheme: the config's `quantization`; None leaves the module as it is.

    Returns:
        The module to serve.

    Raises:
        RepositoryError: an unknown scheme.
    """
    if scheme is None:
        return module
    if scheme not in QUANTIZATION_SCHEMES:
        raise RepositoryError(f"unknown quantization {scheme!r}; known: {', '.join(QUANTIZATION_SCHEMES)}")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    layers = {torch.nn.LSTM: default_dynamic_qconfig, torch.nn.Linear: per_channel_dynamic_qconfig}
    # torch.ao marks eager quantization deprecated but still ships it; torchao has no dynamic LSTM.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        return quantize_dynamic(module, layers, dtype=torch.qint8).eval()


def serving_device(device: torch.device, scheme: str | None, version: Path) -> torch.device:
    """The device a version runs on: the service's, except that a quantized version runs on the CPU.

    torch's dynamic int8 kernels exist for CPUs only, so an int8 version on a CUDA service is served
    on the CPU, with a warning, rather than refused: one repository then serves on CPU and GPU nodes.

    Args:
        device: the service's device.
        scheme: the version's quantization (None: fp32).
        version: the version's directory (named in the warning).

    Returns:
        `device`, or the CPU for a quantized version.
    """
    if scheme is None or device.type == "cpu":
        return device
    log.warning("%s is %s, which torch runs on a CPU only: serving it on cpu, not %s", version, scheme, device)
    return CPU
