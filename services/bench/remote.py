"""`maas bench --address`: closed-loop load on one model of a running server (a gateway, or any service
speaking the Open Inference Protocol over gRPC), at each concurrency in turn, with TLS and an API key if
it needs them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import closed_loop
from services.bench.report import Row, Section
from services.common.codec import encode_inputs
from services.common.errors import InvalidInput
from services.common.examples import example_tensors
from services.common.tls import ClientTls, aio_channel
from services.gateway.rest_codec import parse_infer


def read_request(path: Path, model: str) -> pb.ModelInferRequest:
    """A request from a file holding a REST inference request (`{"inputs": [...]}`, JSON data).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not an inference request (the message says why).
    """
    try:
        return parse_infer(path.read_bytes(), None, model, "").request
    except InvalidInput as exc:
        raise ValueError(f"{path}: {exc}") from None


async def example_request(
    stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub, model: str, metadata: tuple[tuple[str, str], ...] = ()
) -> pb.ModelInferRequest:
    """A request of one example row built from the model's metadata (see `example_tensors`).

    Raises:
        grpc.aio.AioRpcError: the server does not know the model.
    """
    declared = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10, metadata=metadata)
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, example_tensors((t.name, t.datatype, list(t.shape)) for t in declared.inputs))
    return request


async def measure(
    address: str,
    model: str,
    concurrencies: Sequence[int],
    duration: float,
    warmup: float,
    request: pb.ModelInferRequest | None = None,
    progress: bool = True,
    tls: ClientTls | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Section:
    """Load `model` at `address` with ModelInfer calls, one closed loop per concurrency.

    Args:
        address: host:port of the server.
        model: the v2 model.
        concurrencies: callers at once, one load point each.
        duration: measured seconds per point.
        warmup: seconds run first at each point, not measured.
        request: what to send (default: one example row from the model's metadata).
        progress: show a progress bar on stderr.
        tls: TLS files to dial with (none: plaintext).
        metadata: sent with every call (the API key).

    Returns:
        A section with one row per concurrency.

    Raises:
        grpc.aio.AioRpcError: the model's metadata could not be read, or a first call failed.
    """
    from tqdm import tqdm

    async with aio_channel(address, tls or ClientTls()) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = request or await example_request(stub, model, metadata)
        request.model_name = model
        await stub.ModelInfer(request, timeout=30, metadata=metadata)
        rows = []
        with tqdm(total=len(concurrencies), desc=model, unit="point", file=sys.stderr, disable=not progress) as bar:
            for concurrency in concurrencies:
                bar.set_postfix_str(f"concurrency {concurrency}")
                result = await closed_loop(
                    lambda: stub.ModelInfer(request, metadata=metadata), concurrency, duration, warmup
                )
                rows.append(Row(model, result))
                bar.update()
    shapes = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in request.inputs)
    best = max(rows, key=lambda row: row.result.throughput).result
    return Section(
        title=f"{model} at {address}",
        note=(
            f"Closed-loop ModelInfer calls of `{model}` at {address} over gRPC, {duration:g} s per concurrency after "
            f"{warmup:g} s of warm-up; each request: {shapes}. The client runs on this machine and shares its CPUs."
        ),
        rows=rows,
        findings=[f"At most {best.throughput:,.1f} req/s (concurrency {best.concurrency}, p99 {best.p99_ms:.2f} ms)."],
    )
