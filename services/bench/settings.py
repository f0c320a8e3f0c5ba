"""How long and how hard `maas bench` measures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    """Load points and timings of one bench run; `examples` > 0 caps the test examples a quality measurement
    uses (a quick run)."""

    repository: Path
    concurrencies: tuple[int, ...] = (1, 8, 32)
    duration: float = 5.0
    warmup: float = 1.0
    examples: int = 0

    @classmethod
    def quick(cls, repository: Path) -> BenchConfig:
        """A short run (half a second per load point), so a test keeps the harness from rotting."""
        return cls(repository, concurrencies=(1, 8), duration=0.5, warmup=0.1, examples=64)
