"""Open-loop load on the real service with a batch cost like a GPU's: what the latency target makes of it.

On these machines the models' batches cost mostly per row (a CPU computes each row), and the shed curve
past capacity is soft (`scripts/shed_model.py`). A GPU's batch cost is mostly fixed. This serves
`GpuLike` (`scripts/gpu_like_model.py`: fashion-linear whose batches sleep a fixed time plus a little per
row) with `maas serve` and `MAX_LATENCY_MS`, sends it Poisson arrivals at each rate with the latency
bench's C++ open loop (services/bench/native/openloop.cc), the server on CPU 0 and the client on CPU 1
where the machine has both (`services.bench.latency.separate_cores`), and prints, per rate, the
share refused, the calls answered within the target per second, the p99 of those answered and the share
answered late. The service's budget is the target less `--outside-ms` (the client's and the network's
time, as the latency bench takes it off). `--front native` serves it on the native front (its C++ routes
hold the target: docs/native-front.md).

    python scripts/gpu_like_load.py --fixed-ms 50 --per-row-ms 2 --target-ms 500 --rates 175 280 350 420 500
    python scripts/gpu_like_load.py --front native --rates 350 420 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from maas.inference import grpc_service_pb2 as v2pb
from services.bench.latency import SERVER_CPUS, Point, ahead_of_servers, open_loop, separate_cores
from services.cli.processes import on_cpus, serving
from services.common.codec import Tensor, encode_inputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "fashion_linear"
MODEL = "fashion-linear"
WARM_SECONDS = 1.0


async def publish(repository: Path, env: dict[str, str]) -> None:
    """Train fashion-linear briefly (its accuracy does not matter here) into `repository`, in a process of
    its own (with `env`, whose path holds the example).

    Raises:
        RuntimeError: the training failed.
    """
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "fashion_linear.train", str(repository), "--epochs", "1", "--train-limit", "2000"),
        stdout=asyncio.subprocess.DEVNULL,
        env=env,
    )
    if await process.wait():
        raise RuntimeError(f"training fashion-linear into {repository} failed")


def requests(count: int = 32) -> list[bytes]:
    """`count` serialized one-image requests."""
    generator = np.random.default_rng(0)
    serialized = []
    for _ in range(count):
        request = v2pb.ModelInferRequest(model_name=MODEL)
        encode_inputs(request, [Tensor("IMAGE", "FP32", generator.random((1, 784), dtype=np.float32))])
        serialized.append(request.SerializeToString())
    return serialized


async def measure(
    fixed_ms: float,
    per_row_ms: float,
    target_ms: float,
    outside_ms: float,
    rates: list[float],
    seconds: float,
    front: str = "python",
) -> list[Point]:
    """Serve `GpuLike` with its batch cost and a budget of `target_ms - outside_ms`, warm it up (so its cost
    fit is ready), then run an open loop at each of `rates` for `seconds`.

    Returns:
        One point per rate, against `target_ms`.
    """
    with tempfile.TemporaryDirectory() as repository:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)]),
            "GPU_LIKE_FIXED_MS": str(fixed_ms),
            "GPU_LIKE_PER_ROW_MS": str(per_row_ms),
            "MAAS_FASHION_LINEAR_MAX_LATENCY_MS": str(target_ms - outside_ms),
            "MAAS_FASHION_LINEAR_MAX_BATCH_SIZE": "64",
            "MAAS_FASHION_LINEAR_METRICS_PORT": "0",
            "MAAS_FASHION_LINEAR_FRONT": front,
        }
        await publish(Path(repository), env)
        with on_cpus(SERVER_CPUS if separate_cores() else None):
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "services.cli.main", "serve", "gpu_like_model:GpuLike"),
                *("--repository", repository, "--app-dir", str(ROOT / "scripts"), "--port", "0"),
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        async with serving(process, MODEL) as address:
            with ahead_of_servers():
                return await _open_loops(address, rates, seconds, target_ms)


async def _open_loops(address: str, rates: list[float], seconds: float, target_ms: float) -> list[Point]:
    """Warm the service up at a third of the first rate, then at it; then an open loop at each rate."""
    sent = requests()
    for rate in (rates[0] / 3, rates[0]):
        await open_loop(address, sent, lambda _t, rate=rate: rate, WARM_SECONDS, seed=len(rates))
    points = []
    for index, rate in enumerate(rates):
        outcomes = await open_loop(address, sent, lambda _t, rate=rate: rate, seconds, seed=index)
        points.append(Point(MODEL, rate, seconds, outcomes, target_ms))
    return points


def main() -> None:
    """Print, per rate, what the service refused and answered in time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed-ms", type=float, default=50, help="a batch's fixed cost")
    parser.add_argument("--per-row-ms", type=float, default=2, help="a batch's cost per call")
    parser.add_argument("--target-ms", type=float, default=500, help="the latency target T")
    parser.add_argument("--outside-ms", type=float, default=3, help="T less the service's MAX_LATENCY_MS")
    parser.add_argument("--rates", type=float, nargs="+", default=[175, 280, 350, 420, 500], help="calls/s")
    parser.add_argument("--seconds", type=float, default=8, help="per rate")
    parser.add_argument("--front", choices=["python", "native"], default="python", help="the service's front")
    args = parser.parse_args()
    points = asyncio.run(
        measure(args.fixed_ms, args.per_row_ms, args.target_ms, args.outside_ms, args.rates, args.seconds, args.front)
    )
    for point in points:
        late = sum(o.ok and o.seconds * 1000 > point.target_ms for o in point.outcomes) / len(point.outcomes)
        print(
            f"{point.rate:6.0f} calls/s offered: {point.shed:6.1%} refused, {point.goodput:7.1f} calls/s within "
            f"T, served p99 {point.served_p99_ms:7.1f} ms (T {point.target_ms:g}), {late:.2%} late, "
            f"{point.failed} failed otherwise"
        )


if __name__ == "__main__":
    main()
