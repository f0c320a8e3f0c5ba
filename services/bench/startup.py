"""Cold start (process start to READY, per service and hosting) and what `maas-timing` costs."""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import closed_loop
from services.bench.ray_hosting import free_port
from services.bench.report import Row, Section, load_pyplot
from services.bench.settings import BenchConfig
from services.cli.processes import serving, spawn
from services.common.codec import Tensor, encode_inputs
from services.common.timing import TIMING_KEY
from services.vision.data import load_split
from services.vision.spec import MODEL_NAME

SERVICES = ("tokenizer", "vision", "text", "transformer")
TARGETS_S = {"tokenizer": 1.5, "vision": 3.0, "transformer": 5.0}
"""Median cold start each service should stay under, grpc hosting."""
TIMING_CONCURRENCY = 16
TIMING_ROUNDS = 2
TIMING_FRONTS = ("python", "native")
"""The fronts whose cost of `maas-timing` is measured: the grpc.aio server (the default), and the native
front, which answers calls that ask for `maas-timing` itself (its pump builds their entries)."""
NOT_ASKED, ASKED = "not asked", "maas-timing: 1"
TIMING_ASKS = {NOT_ASKED: (), ASKED: ((TIMING_KEY, "1"),)}
"""The callers the `maas-timing` rounds alternate, by label: the request metadata each sends."""


async def cold_start(service: str, hosting: str, config: BenchConfig) -> float:
    """Seconds from starting `maas run` to its `READY <service>` line (the service stopped after).

    Args:
        service: the service to start.
        hosting: `grpc` (`maas run SERVICE`) or `ray` (`maas run ray`, a local Ray hosting it alone).
        config: the bench's settings (the repository).
    """
    prefix = f"MAAS_{service.upper()}_"
    env = {"MAAS_MODEL_REPOSITORY": str(config.repository), f"{prefix}METRICS_PORT": "0", f"{prefix}PORT": "0"}
    if hosting == "ray":
        env |= {
            "MAAS_RAY_SERVICES": json.dumps([service]),
            "MAAS_RAY_MIN_REPLICAS": "1",
            "MAAS_RAY_MAX_REPLICAS": "1",
            "MAAS_RAY_GRPC_PORT": str(free_port()),
            "MAAS_RAY_HTTP_PORT": str(free_port()),
        }
    started = time.perf_counter()
    process = await spawn(service if hosting == "grpc" else "ray", env=env)
    async with serving(process, service):
        return time.perf_counter() - started


async def _timing_cost(config: BenchConfig, front: str) -> list[Row]:
    """fashion_cnn at `TIMING_CONCURRENCY` with and without `maas-timing: 1`, alternating rounds, on one server
    with `front`."""
    images, _ = load_split("test")
    request = v2pb.ModelInferRequest(model_name=MODEL_NAME)
    encode_inputs(request, [Tensor("IMAGE", "FP32", np.ascontiguousarray(images[:1]))])
    env = {
        "MAAS_VISION_METRICS_PORT": "0",
        "MAAS_MODEL_REPOSITORY": str(config.repository),
        "MAAS_VISION_PORT": "0",
        "MAAS_VISION_FRONT": front,
    }
    rows = []
    async with (
        serving(await spawn("vision", env=env), "vision") as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(TIMING_ROUNDS):
            for ask, metadata in TIMING_ASKS.items():
                result = await closed_loop(
                    lambda m=metadata: stub.ModelInfer(request, metadata=m),
                    TIMING_CONCURRENCY,
                    config.duration,
                    config.warmup,
                )
                rows.append(Row(_timing_label(front, ask), result))
    return rows


def _timing_label(front: str, ask: str) -> str:
    return f"fashion_cnn, {front} front, {ask}"


def _rounds(rows: list[Row], front: str, ask: str) -> list[float]:
    """The throughput of each `maas-timing` round on `front` by the callers `ask` labels."""
    return [row.result.throughput for row in rows if row.label == _timing_label(front, ask)]


def _plot(path: Path, medians: dict[tuple[str, str], float], rows: list[Row]) -> None:
    """Cold start medians per service and hosting beside each grpc target, and the `maas-timing` rounds'
    throughput per front, asked for or not."""
    pyplot = load_pyplot()
    figure, (starts, timing) = pyplot.subplots(1, 2, figsize=(12, 4.5), width_ratios=(3, 2))
    hostings = list(dict.fromkeys(hosting for _, hosting in medians))
    width = 0.8 / len(hostings)
    for i, hosting in enumerate(hostings):
        left = [s - 0.4 + i * width for s in range(len(SERVICES))]
        heights = [medians[service, hosting] for service in SERVICES]
        bars = starts.bar(left, heights, width, align="edge", label=f"{hosting} hosting")
        starts.bar_label(bars, fmt="%.2f", fontsize=8)
        if hosting == "grpc":
            targeted = [s for s, service in enumerate(SERVICES) if service in TARGETS_S]
            ys = [TARGETS_S[SERVICES[s]] for s in targeted]
            xs = [left[s] for s in targeted]
            starts.hlines(ys, xs, [x + width for x in xs], "black", "--", label="target, grpc hosting")
    starts.set(title="cold start to READY (median)", ylabel="seconds", xticks=range(len(SERVICES)))
    starts.set_ylim(0, 1.3 * max(max(medians.values()), *TARGETS_S.values()))
    starts.set_xticklabels(SERVICES)
    starts.legend(loc="upper left", fontsize="small")
    for f, front in enumerate(TIMING_FRONTS):
        for a, ask in enumerate(TIMING_ASKS):
            rounds = _rounds(rows, front, ask)
            x = f + (a - 0.5) * 0.4
            timing.bar(x, statistics.median(rounds), 0.4, color=f"C{2 + a}", label=ask if f == 0 else None)
            timing.plot([x] * len(rounds), rounds, "k.", markersize=5)
    timing.set(
        title=f"maas-timing: fashion_cnn at concurrency {TIMING_CONCURRENCY}",
        ylabel="requests/s (bars: median; dots: rounds)",
        xticks=range(len(TIMING_FRONTS)),
    )
    timing.set_xticklabels([f"{front} front" for front in TIMING_FRONTS])
    timing.set_ylim(0, 1.2 * max(r.result.throughput for r in rows))
    timing.legend(loc="upper left", fontsize="small")
    for axes in (starts, timing):
        axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


async def startup_section(config: BenchConfig) -> Section:
    """Cold start per service and hosting (median of `config.cold_starts`), and the cost of `maas-timing` on
    each front (`TIMING_FRONTS`)."""
    section = Section(
        title="Cold start and maas-timing",
        note=(
            "Cold start: seconds from starting `maas run SERVICE` (grpc hosting) or `maas run ray` hosting that "
            "service alone (ray hosting: a fresh local Ray, one replica) to its `READY` line, i.e. models loaded "
            f"and serving; median of {config.cold_starts} starts, one after another. maas-timing: fashion_cnn "
            f"(v2, one image) at concurrency {TIMING_CONCURRENCY}, callers asking for `maas-timing` or not, "
            f"alternating over {TIMING_ROUNDS} rounds, on one server per front: the grpc.aio server "
            "(`MAAS_VISION_FRONT=python`, the default) and the native front (`MAAS_VISION_FRONT=native`, which "
            "answers calls that ask for `maas-timing` itself; docs/native-front.md), with the same Python client, "
            "on the same machine."
        ),
        caption="cold start per service and hosting, and what maas-timing costs per front",
    )
    lines = ["| service | hosting | median s | starts s |", "|---|---|---:|---:|"]
    medians: dict[tuple[str, str], float] = {}
    for hosting in config.cold_start_hostings:
        for service in SERVICES:
            times = [await cold_start(service, hosting, config) for _ in range(config.cold_starts)]
            medians[service, hosting] = statistics.median(times)
            starts = ", ".join(f"{t:.2f}" for t in times)
            lines.append(f"| {service} | {hosting} | {medians[service, hosting]:.2f} | {starts} |")
    section.table = lines
    section.findings = [
        "Cold start, grpc hosting (median; target): "
        + ", ".join(f"{s} {medians[s, 'grpc']:.2f} s (≤ {t} s)" for s, t in TARGETS_S.items())
        + "."
    ]
    for front in TIMING_FRONTS:
        rows = await _timing_cost(config, front)
        section.rows += rows
        asked = statistics.median(_rounds(rows, front, ASKED))
        plain = statistics.median(_rounds(rows, front, NOT_ASKED))
        section.findings.append(
            f"At concurrency {TIMING_CONCURRENCY}, on the {front} front, callers asking for `maas-timing` get "
            f"{asked / plain:.1%} of the throughput of callers who do not ({asked:,.0f} vs {plain:,.0f} req/s, "
            "medians of the rounds)."
        )
    section.figure = functools.partial(_plot, medians=medians, rows=section.rows)
    return section
