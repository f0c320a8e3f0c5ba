"""fashion-linear (docs/examples/fashion_linear) with a batch cost like a GPU's: mostly fixed.

Each batch sleeps `GPU_LIKE_FIXED_MS + GPU_LIKE_PER_ROW_MS x rows` milliseconds (both required in the
environment) after its numpy forward pass, standing in for a device's kernel launches and copies (a
sleep, like a device sync, holds no CPU and no GIL). `scripts/gpu_like_load.py` serves it; it needs
`docs/examples/fashion_linear` on the path.
"""

from __future__ import annotations

import os
import time

from fashion_linear.model import SoftmaxRegression

from services.common.model import Arrays, Version

FIXED_ENV = "GPU_LIKE_FIXED_MS"
PER_ROW_ENV = "GPU_LIKE_PER_ROW_MS"


class GpuLike(SoftmaxRegression):
    """`SoftmaxRegression` whose batches also take the time the environment gives them."""

    fixed_s = per_row_s = 0.0

    @classmethod
    def load(cls, version: Version) -> GpuLike:
        """The regression's weights, and the batch cost from the environment.

        Raises:
            KeyError: `GPU_LIKE_FIXED_MS` or `GPU_LIKE_PER_ROW_MS` is not set.
        """
        model = super().load(version)
        model.fixed_s = float(os.environ[FIXED_ENV]) / 1000
        model.per_row_s = float(os.environ[PER_ROW_ENV]) / 1000
        return model

    def predict(self, batch: Arrays) -> Arrays:
        """The regression's probabilities, after the batch's device time."""
        outputs = super().predict(batch)
        time.sleep(self.fixed_s + self.per_row_s * len(batch["IMAGE"]))
        return outputs
