"""scripts/gpu_like_load.py's harness: the real service serving `GpuLike` (a mostly fixed batch cost)
under a latency target, measured by the C++ open loop. Well below capacity, so a check that the harness
serves, measures and cleans up, not of the batcher's search (tests/unit/test_latency_batching.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_like_load.py"


@pytest.mark.parametrize("front", ["python", "native"])
async def test_well_below_capacity_every_call_is_answered_within_the_target(front: str):
    spec = importlib.util.spec_from_file_location("gpu_like_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        [point] = await module.measure(5, 0.2, target_ms=100, outside_ms=3, rates=[60], seconds=2, front=front)
    finally:
        del sys.modules[spec.name]
    assert len(point.outcomes) == 120
    assert point.shed == 0 and point.failed == 0
    assert point.goodput == 60 and point.served_p99_ms <= 100
