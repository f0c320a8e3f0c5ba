"""How long and how hard `maas bench` measures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    """Load points and timings of one bench run.

    Attributes:
        examples: when above 0, the most test examples a quality measurement uses (a quick run).
        cold_starts: starts per service and hosting whose median is its cold start.
        cold_start_hostings: the hostings whose cold start is measured.
        static_delays_ms: the queue delays the latency-target benchmark sweeps for the best static one.
    """

    repository: Path
    concurrencies: tuple[int, ...] = (1, 8, 32)
    duration: float = 5.0
    warmup: float = 1.0
    examples: int = 0
    cold_starts: int = 3
    cold_start_hostings: tuple[str, ...] = ("grpc", "ray")
    static_delays_ms: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0)

    @classmethod
    def quick(cls, repository: Path) -> BenchConfig:
        """A short run (half a second per load point, one start per service, grpc hosting, 64 test
        examples per quality measurement), so a test keeps the harness from rotting."""
        return cls(
            repository,
            concurrencies=(1, 8),
            duration=0.5,
            warmup=0.1,
            examples=64,
            cold_starts=1,
            cold_start_hostings=("grpc",),
            static_delays_ms=(0.0,),
        )
