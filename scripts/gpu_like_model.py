"""fashion-linear (docs/examples/fashion_linear) with a batch cost like a GPU's: mostly fixed.

Each batch sleeps `GPU_LIKE_FIXED_MS + GPU_LIKE_PER_ROW_MS x rows` milliseconds after its numpy forward
pass, standing in for a device's kernel launches and copies (a sleep, like a device sync, holds no CPU and
no GIL). `scripts/gpu_like_load.py` serves it; it needs `docs/examples/fashion_linear` on the path.
"""

from __future__ import annotations

import os
import time

from fashion_linear.model import SoftmaxRegression

from services.common.model import Arrays

FIXED_ENV = "GPU_LIKE_FIXED_MS"
PER_ROW_ENV = "GPU_LIKE_PER_ROW_MS"


class GpuLike(SoftmaxRegression):
    """`SoftmaxRegression` whose batches also take the time the environment gives them."""

    fixed_s = float(os.environ.get(FIXED_ENV, "5")) / 1000
    per_row_s = float(os.environ.get(PER_ROW_ENV, "0.2")) / 1000

    def predict(self, batch: Arrays) -> Arrays:
        """The regression's probabilities, after the batch's device time."""
        outputs = super().predict(batch)
        time.sleep(self.fixed_s + self.per_row_s * len(batch["IMAGE"]))
        return outputs
