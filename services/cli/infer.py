"""`maas infer`: ask the gateway to classify text or images, or to embed text; print readable answers."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2 as pb
from maas.gateway.v1 import gateway_pb2_grpc
from services.cli import connection
from services.common.server import host_port
from services.common.settings import GatewaySettings
from services.common.tls import TlsFilesError, secure_channel

TEXT_MODELS = {"lstm": pb.TEXT_MODEL_LSTM, "transformer": pb.TEXT_MODEL_TRANSFORMER}
MODEL_NAMES = {value: key for key, value in TEXT_MODELS.items()}
SHOWN_DIMENSIONS = 6


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `maas infer text|image|embed` to the command line."""
    infer = commands.add_parser("infer", help="ask the gateway: classify text or images, embed text")
    kinds = infer.add_subparsers(dest="kind", required=True)
    text = kinds.add_parser("text", help="sentiment of reviews (tokenizer -> text model)")
    text.add_argument("texts", nargs="+", help="texts to classify")
    text.add_argument("--model", choices=sorted(TEXT_MODELS), help="text model (default: the gateway's)")
    image = kinds.add_parser("image", help="Fashion-MNIST class of PNG or JPEG images")
    image.add_argument("images", nargs="+", type=Path, help="image files")
    embed = kinds.add_parser("embed", help="MiniLM sentence embeddings")
    embed.add_argument("texts", nargs="+", help="texts to embed")
    for parser in (text, image):
        parser.add_argument("--top-k", type=int, default=2, help="labels shown per input")
    for parser in (text, image, embed):
        parser.add_argument("--address", help="gateway address (default: MAAS_GATEWAY_HOST:MAAS_GATEWAY_PORT)")
        parser.add_argument("--timeout", type=float, default=30.0, help="deadline of the call, in seconds")
        connection.add_options(parser)


def _labels(classification: common_pb2.Classification) -> list[str]:
    return [f"  {label.name:<14} {label.probability:7.2%}" for label in classification.labels]


def _embedding(values: Sequence[float]) -> str:
    vector = np.asarray(values, dtype=np.float32)
    shown = ", ".join(f"{v:+.4f}" for v in vector[:SHOWN_DIMENSIONS])
    return f"  {len(vector)} dimensions, norm {np.linalg.norm(vector):.3f}: [{shown}, ...]"


def _call(stub: gateway_pb2_grpc.GatewayServiceStub, args: argparse.Namespace) -> tuple[list[str], str]:
    """Make the call `args` describe; return the lines to print and what served it."""
    metadata = connection.metadata(args)
    if args.kind == "text":
        model = TEXT_MODELS.get(args.model, pb.TEXT_MODEL_UNSPECIFIED)
        request = pb.ClassifyTextRequest(texts=args.texts, model=model, top_k=args.top_k)
        response = stub.ClassifyText(request, timeout=args.timeout, metadata=metadata)
        lines = [
            line for text, result in zip(args.texts, response.results, strict=True) for line in (text, *_labels(result))
        ]
        return lines, f"{MODEL_NAMES.get(response.model, 'text')} model, version {response.model_version}"
    if args.kind == "image":
        images = [path.read_bytes() for path in args.images]
        response = stub.ClassifyImage(
            pb.ClassifyImageRequest(images=images, top_k=args.top_k), timeout=args.timeout, metadata=metadata
        )
        lines = [
            line
            for path, result in zip(args.images, response.results, strict=True)
            for line in (str(path), *_labels(result))
        ]
        return lines, f"fashion_cnn, version {response.model_version}"
    response = stub.Embed(pb.EmbedRequest(texts=args.texts), timeout=args.timeout, metadata=metadata)
    lines = [
        line
        for text, embedding in zip(args.texts, response.embeddings, strict=True)
        for line in (text, _embedding(embedding.values))
    ]
    return lines, f"minilm_embed, version {response.model_version}"


def infer(args: argparse.Namespace) -> int:
    """Run `maas infer ...` against the gateway.

    Returns:
        0 on success; 1 if a file cannot be read or the gateway refused (the status is printed).
    """
    settings = GatewaySettings()
    address = args.address or host_port(settings.host, settings.port)
    try:
        with secure_channel(address, connection.client_tls(args)) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            started = time.perf_counter()
            lines, served = _call(stub, args)
            elapsed = (time.perf_counter() - started) * 1000
    except (OSError, TlsFilesError) as exc:
        sys.stderr.write(f"maas infer: {exc}\n")
        return 1
    except grpc.RpcError as exc:
        sys.stderr.write(f"maas infer: {exc.code().name}: {exc.details()}\n")
        return 1
    sys.stdout.write("\n".join([*lines, f"({served}; {elapsed:.1f} ms via {address})"]) + "\n")
    return 0
