"""`make bench-peers`: maas beside real Triton, KServe and Ray Serve's proxy, on the same weights and
the same request, driven by stock perf_analyzer and by the project's load generator; writes
`docs/peers.md` and a plot per model.

All systems of a model run at once; at each concurrency, each client drives every system in turn
(the order rotating from step to step), so slow drift of a shared machine falls on all of them.
Server CPU per request is the CPU time of the server's process trees (from /proc) over a stretch of
steady load, divided by the requests served in it.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
import torch

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.bench import perf_analyzer
from services.bench.loadgen import closed_loop, in_process
from services.bench.peers.cpu import seconds_between, tree_ticks
from services.bench.peers.models import MODELS as BENCH_MODELS
from services.bench.peers.models import Predict, load
from services.bench.peers.systems import (
    MODELS,
    PEER_SYSTEMS,
    THREADS,
    Server,
    maas_gateway,
    maas_grpc,
    maas_ray,
)
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.common.repository import is_torch_source, newest_source, read_model_file, read_version
from services.transformer.spec import EMBED_MODEL

CLIENTS = ("perf_analyzer", "loadgen")
IN_PROCESS = "in-process"
MAAS_SYSTEMS = ("maas-grpc", "maas-native", "maas-gateway", "maas-ray")
SYSTEMS = (*MAAS_SYSTEMS, *(peer.__name__ for peer in PEER_SYSTEMS))
"""The systems a run can measure, by the names `--system` takes."""
BASELINE = "maas grpc (baseline)"


@dataclass(frozen=True)
class PeersConfig:
    """Load points and timings of one run.

    Attributes:
        repository: the model repository every system serves from.
        concurrencies: requests in flight at each load point.
        duration: seconds the load generator measures each point (after `warmup`).
        warmup: seconds of load before each measurement.
        window_ms: perf_analyzer's measurement window; a run reports three.
        models: the models measured.
        longer: model -> how many times longer its points are measured. MiniLM serves about a hundred
            requests a second here, so that each point sees every caller of concurrency 64 several times.
        systems: the systems measured (names from `SYSTEMS`); the in-process model always is.
        baseline: another checkout of maas whose grpc hosting is measured too, as `maas grpc (baseline)`:
            before and after a change in one run.
    """

    repository: Path
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    duration: float = 4.0
    warmup: float = 1.0
    window_ms: int = 1500
    models: tuple[str, ...] = BENCH_MODELS
    longer: dict[str, float] = field(default_factory=lambda: {EMBED_MODEL: 2.0})
    systems: tuple[str, ...] = SYSTEMS
    baseline: Path | None = None

    def for_model(self, model: str) -> PeersConfig:
        """These settings with `model`'s points measured `longer`."""
        factor = self.longer.get(model, 1.0)
        return replace(self, duration=self.duration * factor, window_ms=round(self.window_ms * factor), longer={})


@dataclass
class Measurement:
    """One system at one load point with one client. Latencies in ms; CPU in ms per request."""

    model: str
    system: str
    client: str
    concurrency: int
    throughput: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms: float | None = None
    failed: int = 0
    error: str = ""


@dataclass
class ModelRun:
    """Everything measured for one model."""

    model: str
    version: str
    request: str
    measurements: list[Measurement] = field(default_factory=list)
    output_differences: dict[str, float] = field(default_factory=dict)
    not_started: dict[str, str] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)
    """System -> the name and version its ServerMetadata reports."""


def request_arrays(model: str) -> dict[str, np.ndarray]:
    """The request every system gets: the committed perf_analyzer input data, batch of one."""
    inputs = json.loads((perf_analyzer.INPUT_DATA / f"{model}.json").read_text())["data"][0]
    datatypes = {spec.name: spec.datatype for spec in MODELS[model].inputs}
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    return {
        name: np.asarray(tensor["content"], dtypes[datatypes[name]]).reshape([1, *tensor["shape"]])
        for name, tensor in inputs.items()
    }


def _describe(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {arrays[name].dtype} {list(arrays[name].shape)}" for name in arrays)


def served_source(repository: Path, model: str) -> Path:
    """The version directory maas serves a request that names no version (`model.json`'s default version),
    when it holds fp32 torch weights; else the newest that does. Every peer loads this one, so all run the
    same network (the newest may be a pruned, smaller one that maas serves only by name).

    Raises:
        FileNotFoundError: no version holds fp32 torch weights.
    """
    default = read_model_file(repository, model).default_version
    directory = repository / model / default
    if default and directory.is_dir() and is_torch_source(read_version(directory, model)):
        return directory
    return newest_source(repository, model, "run `make models`")


async def _check(run: ModelRun, server: Server, request: pb.ModelInferRequest, expected: dict[str, np.ndarray]) -> None:
    """Record what the server says it is, and how far its answer is from the in-process model's."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=60)
        outputs = decode_outputs(await stub.ModelInfer(request, timeout=60))
    run.servers[server.label] = f"{metadata.name} {metadata.version}".strip()
    run.output_differences[server.label] = max(
        float(np.abs(outputs[name].array - array).max()) for name, array in expected.items()
    )


async def _loadgen(server: Server, model: str, request: pb.ModelInferRequest, c: int, config: PeersConfig):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = lambda: stub.ModelInfer(request, timeout=60)  # noqa: E731
        await closed_loop(call, c, config.warmup, 0)
        before = tree_ticks(server.pids)
        result = await closed_loop(call, c, config.duration, 0)
        cpu = seconds_between(before, tree_ticks(server.pids))
    return Measurement(
        model,
        server.label,
        "loadgen",
        c,
        result.throughput,
        result.p50_ms,
        result.p95_ms,
        result.p99_ms,
        cpu / result.completed * 1000 if result.completed else None,
        result.failed,
    )


async def _perf_analyzer(server: Server, model: str, c: int, config: PeersConfig) -> Measurement:
    """perf_analyzer's report; CPU per request from the server's CPU rate over two of its three
    windows, half a second in (after its metadata calls), divided by the throughput it reports."""
    run = asyncio.create_task(perf_analyzer.run(model, server.address, c, config.window_ms))
    await asyncio.sleep(0.5)
    cpu_rate = 0.0
    if not run.done():
        before, started = tree_ticks(server.pids), time.monotonic()
        await asyncio.sleep(2 * config.window_ms / 1000)
        cpu_rate = seconds_between(before, tree_ticks(server.pids)) / (time.monotonic() - started)
    try:
        result = await run
    except perf_analyzer.PerfAnalyzerError as exc:
        return Measurement(model, server.label, "perf_analyzer", c, error=_first_error(str(exc)))
    cpu_ms = cpu_rate / result.throughput * 1000 if result.throughput else None
    return Measurement(
        model, server.label, "perf_analyzer", c, result.throughput, result.p50_ms, result.p95_ms, result.p99_ms, cpu_ms
    )


def _first_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return (lines[0] if lines else text.strip().splitlines()[-1])[:200]


def _in_process(model: str, predict: Predict, arrays: dict[str, np.ndarray], c: int, config: PeersConfig):
    """The model called directly at batch `c`: the most any server of `c` concurrent requests can do."""
    batch = {name: np.repeat(array, c, axis=0) for name, array in arrays.items()}
    in_process(lambda: predict(batch), config.warmup, 0)
    cpu_before = time.process_time()
    result = in_process(lambda: predict(batch), config.duration, 0)
    cpu_ms = (time.process_time() - cpu_before) / (result.completed * c) * 1000
    return Measurement(
        model, IN_PROCESS, "-", c, result.throughput * c, result.p50_ms, result.p95_ms, result.p99_ms, cpu_ms
    )


async def _start(stack: AsyncExitStack, run: ModelRun, label: str, starting) -> Server | None:
    try:
        return await stack.enter_async_context(starting)
    except Exception as exc:
        run.not_started[label] = _first_error(str(exc)) or type(exc).__name__
        return None


async def bench_model(model: str, config: PeersConfig, logs: Path) -> ModelRun:
    """Start every system serving `model`, check they answer alike, then measure them alternating.

    Args:
        model: `fashion_cnn` or `minilm_embed`.
        config: load points and timings.
        logs: where the servers write their logs.

    Returns:
        The model's measurements.
    """
    directory = served_source(config.repository, model)
    arrays = request_arrays(model)
    run = ModelRun(model, directory.name, _describe(arrays))
    predict = load(model, directory)
    expected = predict(arrays)
    datatypes = {spec.name: spec.datatype for spec in MODELS[model].inputs}
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, [Tensor(name, datatypes[name], array) for name, array in arrays.items()])
    async with AsyncExitStack() as stack:
        servers = []
        wanted = set(config.systems)
        if wanted & {"maas-grpc", "maas-gateway"}:
            direct = await _start(stack, run, "maas grpc", maas_grpc(model, config.repository, logs))
            if direct is not None and "maas-grpc" in wanted:
                servers.append(direct)
            if direct is not None and "maas-gateway" in wanted:
                servers.append(await _start(stack, run, "maas gateway", maas_gateway(model, direct, logs)))
        if "maas-native" in wanted:
            native = maas_grpc(model, config.repository, logs, label="maas native", front="native")
            servers.append(await _start(stack, run, "maas native", native))
        if config.baseline is not None:
            baseline = maas_grpc(model, config.repository, logs, config.baseline, BASELINE)
            servers.append(await _start(stack, run, BASELINE, baseline))
        if "maas-ray" in wanted:
            servers.append(await _start(stack, run, "maas ray", maas_ray(model, config.repository, logs)))
        for peer in PEER_SYSTEMS:
            if peer.__name__ in wanted:
                servers.append(await _start(stack, run, peer.__name__, peer(model, directory, logs)))
        servers = [server for server in servers if server is not None]
        for server in servers:
            await _check(run, server, request, expected)
        for step, c in enumerate(config.concurrencies):
            run.measurements.append(await asyncio.to_thread(_in_process, model, predict, arrays, c, config))
            order = servers[step % len(servers) :] + servers[: step % len(servers)]
            for server in order:
                run.measurements.append(await _perf_analyzer(server, model, c, config))
            for server in reversed(order):
                run.measurements.append(await _loadgen(server, model, request, c, config))
    return run


async def run_peers(config: PeersConfig, logs: Path) -> list[ModelRun]:
    """Measure every model in turn, on one torch thread in this process (the in-process rows)."""
    torch.set_num_threads(THREADS)
    return [await bench_model(model, config.for_model(model), logs) for model in config.models]
