"""Ray Serve behind its native gRPC proxy, for the peers benchmark: one maas model as a Ray Serve user
writes it (the v2 RPCs as deployment methods, requests gathered by `@serve.batch`), reached through
Serve's own gRPC proxy with no maas front.

Run with the project's Python: `python scripts/peers/serve_app.py MODEL VERSION_DIRECTORY GRPC_PORT
THREADS`. It starts a local Ray on loopback (as the ray hosting does), deploys the model with one
replica, prints `READY serve 127.0.0.1:GRPC_PORT`, and stops Ray on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import ray
import torch
from ray import serve

from maas.inference import grpc_service_pb2 as pb
from maas.inference import model_config_pb2 as config_pb
from services.bench.peers.models import load, predict_batch
from services.bench.peers.systems import MODELS
from services.common.codec import Tensor, decode_inputs, infer_reply
from services.common.settings import RaySettings
from services.common.v2 import DATA_TYPES
from services.ray import cluster

MAX_BATCH_SIZE = 32
BATCH_WAIT_SECONDS = 0.0001


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
class V2Model:
    """The v2 RPCs perf_analyzer and the project's load generator call, over one model version."""

    def __init__(self, model: str, directory: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.name = model
        self.predict = load(model, Path(directory))
        self.inputs, self.outputs = MODELS[model].inputs, MODELS[model].outputs

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="ray-serve", version=ray.__version__)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        def tensors(specs):
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs
            ]

        return pb.ModelMetadataResponse(
            name=self.name,
            versions=["1"],
            platform="pytorch",
            inputs=tensors(self.inputs),
            outputs=tensors(self.outputs),
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        config = config_pb.ModelConfig(
            name=self.name,
            platform="pytorch",
            max_batch_size=MAX_BATCH_SIZE,
            input=[
                config_pb.ModelInput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=s.shape[1:])
                for s in self.inputs
            ],
            output=[
                config_pb.ModelOutput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=s.shape[1:])
                for s in self.outputs
            ],
        )
        config.dynamic_batching.max_queue_delay_microseconds = round(BATCH_WAIT_SECONDS * 1e6)
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        inputs = {name: tensor.array for name, tensor in decode_inputs(request).items()}
        return infer_response(self.name, request, await self.infer(inputs))

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_SECONDS)
    async def infer(self, requests: list[dict]) -> list[dict]:
        return predict_batch(self.predict, requests)


def infer_response(model: str, request: pb.ModelInferRequest, outputs: dict) -> pb.ModelInferResponse:
    """The v2 response to `request`: the model's FP32 `outputs` in raw contents, as maas answers."""
    head = pb.ModelInferResponse(model_name=model, model_version="1", id=request.id)
    return infer_reply(head, [Tensor(name, "FP32", array) for name, array in outputs.items()]).message()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def main() -> None:
    """Serve until SIGTERM, then stop Serve and Ray."""
    model, directory, grpc_port, threads = sys.argv[1:5]
    settings = RaySettings(grpc_port=int(grpc_port), http_port=_free_port(), num_cpus=2)
    cluster.start(settings)
    try:
        serve.run(V2Model.bind(model, directory, int(threads)), name=model, route_prefix=f"/{model}")
        sys.stdout.write(f"READY serve 127.0.0.1:{grpc_port}\n")
        sys.stdout.flush()
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        await stopped.wait()
    finally:
        cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
