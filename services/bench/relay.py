"""A bare gRPC relay for the gateway benchmark: v2 ModelInfer bytes in, the same bytes out to one target.

No interceptor, no parsing, no routing, no metrics: what any Python grpc.aio hop between a client and a
model service costs at least, the floor the gateway's own cost is read against.
`python -m services.bench.relay TARGET` serves on a free loopback port and prints `READY relay ADDRESS`.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

SERVICE = "inference.GRPCInferenceService"


async def serve(target: str) -> None:
    """Relay ModelInfer calls to `target` until the process is stopped.

    Args:
        target: the gRPC address of the model service, e.g. `127.0.0.1:50055`.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        forward = channel.unary_unary(f"/{SERVICE}/ModelInfer")

        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await forward(request, timeout=context.time_remaining())

        server = grpc.aio.server()
        handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(relay)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sys.stdout.write(f"READY relay 127.0.0.1:{port}\n")
        sys.stdout.flush()
        await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
