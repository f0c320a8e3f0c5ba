"""Which torch device a model service computes on.

Importing this module does not import torch (the CLI catches `DeviceError` and must stay torch-free);
`select_device` imports it when called.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class DeviceError(ValueError):
    """A device setting this process cannot honour."""


def resolve_device(requested: str, cuda_devices: int) -> str:
    """The device a service computes on, given its setting and the CUDA devices this process sees.

    Args:
        requested: the `device` setting: `auto`, `cpu`, `cuda` or `cuda:N`.
        cuda_devices: how many CUDA devices torch sees (0 when `torch.cuda.is_available()` is False;
            under Ray, the GPUs Ray assigned to the replica through `CUDA_VISIBLE_DEVICES`).

    Returns:
        `cpu` or `cuda:N`; `auto` is `cuda:0` when a CUDA device is visible, else `cpu`.

    Raises:
        DeviceError: the setting is malformed, asks for CUDA where none is visible, or names a
            device index beyond the visible ones.
    """
    match = re.fullmatch(DEVICE_PATTERN, requested)
    if match is None:
        raise DeviceError(f"device {requested!r}: expected auto, cpu, cuda or cuda:N")
    if requested == "auto":
        return "cuda:0" if cuda_devices else "cpu"
    if requested == "cpu":
        return "cpu"
    index = int(match.group(2)[1:]) if match.group(2) else 0
    if not cuda_devices:
        raise DeviceError(
            f"device {requested!r}: torch sees no CUDA device in this process (torch.cuda.is_available() "
            "is False: no GPU, no driver, a CPU-only torch build, or CUDA_VISIBLE_DEVICES hides it); "
            "use auto or cpu"
        )
    if index >= cuda_devices:
        raise DeviceError(
            f"device {requested!r}: torch sees {cuda_devices} CUDA device(s), cuda:0 to cuda:{cuda_devices - 1}"
        )
    return f"cuda:{index}"


def select_device(requested: str) -> torch.device:
    """The torch device for a service's `device` setting, in this process.

    Args:
        requested: the `device` setting (see `resolve_device`).

    Returns:
        The device to load weights onto and run batches on.

    Raises:
        DeviceError: see `resolve_device`.
    """
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return torch.device(resolve_device(requested, visible))
