"""Example inputs built from a model's declared tensors: what warm-up runs and what a benchmark sends
when it is given no inputs of its own."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from services.common.codec import FIXED_DTYPES, Tensor

EXAMPLE_TEXT = b"maas warm-up: a short example text."
"""The value of every element of an example BYTES tensor."""


def example_tensors(specs: Iterable[tuple[str, str, Sequence[int]]]) -> list[Tensor]:
    """One small valid-looking tensor per declared input: every variable dimension 1, numbers 1 (0.5 for
    floats, so a value in [0, 1] stays in range), BYTES a short UTF-8 text, BOOL false.

    Args:
        specs: (name, v2 datatype, shape with -1 for variable dimensions) of each input.

    Returns:
        The tensors, in the order given.
    """
    tensors = []
    for name, datatype, shape in specs:
        dims = tuple(1 if d < 0 else d for d in shape)
        if datatype == "BYTES":
            array = np.full(dims, EXAMPLE_TEXT, dtype=object)
        else:
            dtype = FIXED_DTYPES[datatype]
            value = 0.5 if dtype.kind == "f" or datatype == "BF16" else (0 if datatype == "BOOL" else 1)
            array = np.full(dims, value, dtype=dtype)
        tensors.append(Tensor(name, datatype, array))
    return tensors
