"""`maas infer`: ask the gateway to classify text or images, or to embed text; print readable answers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2 as pb
from maas.gateway.v1 import gateway_pb2_grpc
from services.cli import connection
from services.common import timing
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
        parser.add_argument(
            "--timing", action="store_true", help="print where the call's time went, per hop (maas-timing)"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object (every value, full precision)")
        connection.add_options(parser)


def _embedding(values: Sequence[float]) -> str:
    vector = np.asarray(values, dtype=np.float32)
    shown = ", ".join(f"{v:+.4f}" for v in vector[:SHOWN_DIMENSIONS])
    return f"  {len(vector)} dimensions, norm {np.linalg.norm(vector):.3f}: [{shown}, ...]"


@dataclass
class Answer:
    """What one `maas infer` call got: each input with its labels or embedding, and what served it."""

    model: str
    version: str
    results: list[dict[str, Any]]
    timing: list[str] = field(default_factory=list)
    """The call's trailing `maas-timing` entries, one per hop (asked for with `--timing`)."""

    def lines(self) -> list[str]:
        """The human-readable lines: each input, then its labels or a summary of its embedding."""
        lines = []
        for result in self.results:
            lines.append(result["input"])
            if "embedding" in result:
                lines.append(_embedding(result["embedding"]))
            else:
                lines += [f"  {label['name']:<14} {label['probability']:7.2%}" for label in result["labels"]]
        return lines


HOP_PARTS = (("queue_us", "queue"), ("batch_wait_us", "batch wait"), ("compute_us", "compute"))


def timing_lines(entries: Sequence[str]) -> list[str]:
    """The `maas-timing` entries of a call as readable lines, one per hop, in the order the hops answered.

    Args:
        entries: the call's trailing `maas-timing` values.
    """
    lines = ["where the time went (ms):"]
    for entry in entries:
        values = timing.parse(entry)
        served = values.get("model", "")
        if served and "version" in values:
            served += f" v{values['version']}"
        parts = [f"{label} {int(values[key]) / 1000:.3f}" for key, label in HOP_PARTS if key in values]
        if "batch_size" in values:
            parts.append(f"batch {values['batch_size']}")
        if "downstream_us" in values:
            parts.append(f"downstream {int(values['downstream_us']) / 1000:.3f}")
        parts.append(f"total {int(values.get('total_us', 0)) / 1000:.3f}")
        lines.append(f"  {values.get('hop', '?'):<12} {served:<22} " + ", ".join(parts))
    return lines


def _labels(classification: common_pb2.Classification) -> list[dict[str, Any]]:
    return [{"name": label.name, "probability": label.probability} for label in classification.labels]


def _call(stub: gateway_pb2_grpc.GatewayServiceStub, args: argparse.Namespace) -> Answer:
    """Make the call `args` describe (asking for `maas-timing` with `--timing`)."""
    metadata = connection.metadata(args)
    if args.timing:
        metadata = (*metadata, (timing.TIMING_KEY, "1"))
    trailers: list[str] = []

    def send(method: Any, request: Any) -> Any:
        if not args.timing:
            return method(request, timeout=args.timeout, metadata=metadata)
        response, call = method.with_call(request, timeout=args.timeout, metadata=metadata)
        trailers.extend(value for key, value in call.trailing_metadata() or () if key == timing.TIMING_KEY)
        return response

    answer = _answer(stub, args, send)
    answer.timing = trailers
    return answer


def _answer(
    stub: gateway_pb2_grpc.GatewayServiceStub, args: argparse.Namespace, send: Callable[[Any, Any], Any]
) -> Answer:
    if args.kind == "text":
        model = TEXT_MODELS.get(args.model, pb.TEXT_MODEL_UNSPECIFIED)
        request = pb.ClassifyTextRequest(texts=args.texts, model=model, top_k=args.top_k)
        response = send(stub.ClassifyText, request)
        results = [
            {"input": text, "labels": _labels(result)}
            for text, result in zip(args.texts, response.results, strict=True)
        ]
        return Answer(MODEL_NAMES.get(response.model, "text"), response.model_version, results)
    if args.kind == "image":
        images = [path.read_bytes() for path in args.images]
        response = send(stub.ClassifyImage, pb.ClassifyImageRequest(images=images, top_k=args.top_k))
        results = [
            {"input": str(path), "labels": _labels(result)}
            for path, result in zip(args.images, response.results, strict=True)
        ]
        return Answer("fashion_cnn", response.model_version, results)
    response = send(stub.Embed, pb.EmbedRequest(texts=args.texts))
    results = [
        {"input": text, "embedding": list(embedding.values)}
        for text, embedding in zip(args.texts, response.embeddings, strict=True)
    ]
    return Answer("minilm_embed", response.model_version, results)


def infer(args: argparse.Namespace) -> int:
    """Run `maas infer ...` against the gateway.

    Returns:
        0 on success; 1 if a file cannot be read or the gateway refused (the status is printed).
    """
    address = connection.gateway_address(args)
    try:
        with secure_channel(address, connection.client_tls(args)) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            started = time.perf_counter()
            answer = _call(stub, args)
            elapsed = (time.perf_counter() - started) * 1000
    except (OSError, TlsFilesError) as exc:
        sys.stderr.write(f"maas infer: {exc}\n")
        return 1
    except grpc.RpcError as exc:
        sys.stderr.write(f"maas infer: {exc.code().name}: {exc.details()}\n")
        return 1
    if args.json:
        document = {"model": answer.model, "version": answer.version, "address": address, "milliseconds": elapsed}
        if args.timing:
            document["timing"] = [timing.parse(entry) for entry in answer.timing]
        sys.stdout.write(json.dumps({**document, "results": answer.results}) + "\n")
        return 0
    served = f"{answer.model} model" if args.kind == "text" else answer.model
    served += f", version {answer.version}"
    lines = [*answer.lines(), *(timing_lines(answer.timing) if args.timing else ())]
    sys.stdout.write("\n".join([*lines, f"({served}; {elapsed:.1f} ms via {address})"]) + "\n")
    return 0
