"""The systems the peers benchmark compares, each started as its own processes on loopback.

Every system serves the same model version with the project's model code, on one torch thread:
- maas, grpc hosting: `maas run <service>` with its default settings;
- maas, grpc hosting with the native front: the same with `front=native` (docs/native-front.md);
- maas through the gateway: `maas run gateway` routing to that same service;
- maas, ray hosting: `maas run ray` hosting the service alone (one replica, the maas front);
- Triton 2.51: `tritonserver`, Python backend (`scripts/peers/triton_model.py`), dynamic batching;
- KServe 0.21: its ModelServer over v2 gRPC (`scripts/peers/kserve_server.py`);
- Ray Serve: its native gRPC proxy in front of a `@serve.batch` deployment (`scripts/peers/serve_app.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import grpc

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from maas.inference import model_config_pb2 as config_pb
from services.bench.peers.cpu import tree_ticks
from services.cli.processes import stop
from services.common.model import TensorSpec
from services.common.sequences import SEQUENCE_INPUTS
from services.common.settings import REPO_ROOT, ServiceSettings
from services.common.v2 import DATA_TYPES
from services.gateway.routing import ModelRoute, Routing, Target
from services.transformer.spec import EMBED_MODEL, EMBED_OUTPUTS, TransformerSettings
from services.vision.spec import INPUTS, MODEL_NAME, OUTPUTS, VisionSettings

PEERS = REPO_ROOT / ".peers"
THREADS = 1
"""torch threads of every system (the maas services' default)."""
TRITON_MAX_BATCH = 32
TRITON_QUEUE_DELAY_US = 100
READY_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Hosted:
    """How maas serves one benchmark model: its service and that service's settings."""

    service: str
    settings: type[ServiceSettings]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def env(self, name: str, value: str) -> tuple[str, str]:
        """The service's environment variable for setting `name`."""
        return f"{self.settings.model_config['env_prefix']}{name.upper()}", value


MODELS = {
    MODEL_NAME: Hosted("vision", VisionSettings, INPUTS, OUTPUTS),
    EMBED_MODEL: Hosted("transformer", TransformerSettings, SEQUENCE_INPUTS, EMBED_OUTPUTS),
}


@dataclass(frozen=True)
class Server:
    """A running system: its label, v2 gRPC address and top processes (whose trees are the server)."""

    label: str
    address: str
    pids: tuple[int, ...]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def _process(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a process (output to `log`) in `cwd` for the block. Stopped with SIGTERM, then killed, and so is
    any process of its tree still running after it ended."""
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        tree = [pid for pid in tree_ticks([process.pid]) if pid != process.pid]
        await stop(process)
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def wait_ready(
    process: asyncio.subprocess.Process, address: str, model: str, log: Path, timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Wait until the server `process` started answers ModelMetadata about `model` at `address`.

    Raises:
        RuntimeError: the process ended, or did not serve `model` within `timeout` seconds (the
            message ends with the server's log).
    """
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline and process.returncode is None:
            try:
                await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=5)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(1)
    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-3000:]
    raise RuntimeError(f"{address} did not serve {model} (exit status {process.returncode}); its log ends:\n{tail}")


@asynccontextmanager
async def _server(
    label: str,
    args: list[str],
    port: int,
    model: str,
    log: Path,
    env: dict[str, str] | None = None,
    also=(),
    cwd: Path = REPO_ROOT,
) -> AsyncIterator[Server]:
    """Run a server process (in `cwd`) listening on loopback `port` until the block ends; yields it once it
    serves `model`. `also` names processes (already running) that serve with it."""
    async with _process(args, log, env, cwd) as process:
        address = f"127.0.0.1:{port}"
        await wait_ready(process, address, model, log)
        yield Server(label, address, (process.pid, *also))


def _maas(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", *args]


def maas_grpc(
    model: str,
    repository: Path,
    logs: Path,
    checkout: Path = REPO_ROOT,
    label: str = "maas grpc",
    front: str = "python",
) -> AbstractAsyncContextManager[Server]:
    """`maas run <service>` with its default settings but `front`, running the `services` package of
    `checkout` (another checkout of maas serves as a baseline; this venv's packages and stubs serve both)."""
    hosted, port = MODELS[model], free_port()
    env = {"MAAS_MODEL_REPOSITORY": str(repository), **dict([hosted.env("metrics_port", "0")])}
    if front != "python":
        env.update([hosted.env("front", front)])
    args = _maas("run", hosted.service, "--port", str(port))
    log = logs / f"maas-{hosted.service}-{checkout.name}-{front}.log"
    return _server(label, args, port, model, log, env, cwd=checkout)


def maas_gateway(model: str, service: Server, logs: Path) -> AbstractAsyncContextManager[Server]:
    """`maas run gateway` routing `model` to the running grpc service (both are the server)."""
    routing = Routing(
        targets={"service": Target(address=f"dns:///{service.address}")},
        models={model: ModelRoute(target="service")},
    )
    (logs / "routing.yaml").write_text(routing.to_yaml(), encoding="utf-8")
    port = free_port()
    env = {"MAAS_GATEWAY_ROUTING_FILE": str(logs / "routing.yaml"), "MAAS_GATEWAY_METRICS_PORT": "0"}
    args = _maas("run", "gateway", "--port", str(port))
    return _server("maas gateway", args, port, model, logs / "maas-gateway.log", env, service.pids)


def maas_ray(model: str, repository: Path, logs: Path) -> AbstractAsyncContextManager[Server]:
    """`maas run ray` hosting the model's service alone: one replica behind the maas front."""
    hosted, port = MODELS[model], free_port()
    env = {
        "MAAS_MODEL_REPOSITORY": str(repository),
        **dict([hosted.env("port", str(port)), hosted.env("metrics_port", "0")]),
        "MAAS_RAY_SERVICES": json.dumps([hosted.service]),
        "MAAS_RAY_MIN_REPLICAS": "1",
        "MAAS_RAY_MAX_REPLICAS": "1",
        "MAAS_RAY_GRPC_PORT": str(free_port()),
        "MAAS_RAY_HTTP_PORT": str(free_port()),
    }
    return _server("maas ray", _maas("run", "ray"), port, model, logs / "maas-ray.log", env)


def _tensors(specs: tuple[TensorSpec, ...], kind: str) -> str:
    entries = (
        f'{{ name: "{s.name}", data_type: {config_pb.DataType.Name(DATA_TYPES[s.datatype])}, '
        f"dims: [{', '.join(map(str, s.shape[1:]))}] }}"
        for s in specs
    )
    return f"{kind} [ {', '.join(entries)} ]"


def triton_repository(model: str, directory: Path, into: Path) -> Path:
    """A Triton model repository serving `model` from the maas version `directory` with the Python
    backend: `<into>/<model>/config.pbtxt` and `<into>/<model>/1/model.py`.

    Returns:
        The repository's root (`into`).
    """
    hosted = MODELS[model]
    parameters = {"version_directory": str(directory), "threads": str(THREADS)}
    config = [
        'backend: "python"',
        f"max_batch_size: {TRITON_MAX_BATCH}",
        _tensors(hosted.inputs, "input"),
        _tensors(hosted.outputs, "output"),
        "instance_group [ { count: 1, kind: KIND_CPU } ]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US} }}",
        "parameters [ "
        + ", ".join(f'{{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
        + " ]",
    ]
    (into / model / "1").mkdir(parents=True)
    (into / model / "config.pbtxt").write_text("\n".join(config) + "\n", encoding="utf-8")
    shutil.copy(REPO_ROOT / "scripts" / "peers" / "triton_model.py", into / model / "1" / "model.py")
    return into


def triton(model: str, directory: Path, logs: Path) -> AbstractAsyncContextManager[Server]:
    """Real Triton 2.51 (`.peers/bin/tritonserver`), gRPC on loopback, HTTP and metrics off."""
    repository = triton_repository(model, directory, logs / "triton-models")
    backends = PEERS / "triton" / "lib" / "python3.11" / "site-packages" / "pytriton" / "tritonserver" / "backends"
    port = free_port()
    args = [
        str(PEERS / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={port}",
        "--allow-http=false",
        "--allow-metrics=false",
    ]
    return _server("Triton 2.51", args, port, model, logs / "triton.log")


def kserve(model: str, directory: Path, logs: Path) -> AbstractAsyncContextManager[Server]:
    """KServe 0.21's ModelServer in the kserve peer's venv."""
    port = free_port()
    script = str(REPO_ROOT / "scripts" / "peers" / "kserve_server.py")
    args = [str(PEERS / "kserve" / "bin" / "python"), script, model, str(directory), str(port), str(free_port())]
    return _server("KServe 0.21", [*args, str(THREADS)], port, model, logs / "kserve.log")


def serve_proxy(model: str, directory: Path, logs: Path) -> AbstractAsyncContextManager[Server]:
    """Ray Serve's native gRPC proxy in front of a `@serve.batch` deployment, on its own local Ray."""
    port = free_port()
    script = str(REPO_ROOT / "scripts" / "peers" / "serve_app.py")
    args = [sys.executable, script, model, str(directory), str(port), str(THREADS)]
    return _server("Ray Serve proxy", args, port, model, logs / "serve.log")


PeerStarter = Callable[[str, Path, Path], AbstractAsyncContextManager[Server]]
PEER_SYSTEMS: tuple[PeerStarter, ...] = (triton, kserve, serve_proxy)
"""The peers, each given (model, version directory, log directory)."""
