"""Tokenizer benchmark: served (v2 and typed) beside `echo` on the same inputs, and in-process."""

from __future__ import annotations

import grpc
import numpy as np
from tokenizers import Tokenizer

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from services.bench.loadgen import closed_loop, in_process
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.cli.processes import running
from services.common.codec import Tensor, encode_inputs
from services.tokenizer.model import DEFAULT_MAX_LENGTH, WordPieceTokenizer

REVIEWS = [
    "I have bought several of the Vitality canned dog food products and have found them all to be of good quality.",
    "Product arrived labeled as Jumbo Salted Peanuts...the peanuts were actually small sized unsalted.",
    "This is a confection that has been around a few centuries. It is a light, pillowy citrus gelatin with nuts.",
    "If you are looking for the secret ingredient in Robitussin I believe I have found it. I got this in addition "
    "to the Root Beer Extract I ordered (which was good) and made some cherry soda. The flavor is very medicinal.",
    "Great taffy at a great price. There was a wide assortment of yummy taffy. Delivery was very quick.",
    "Right now I'm mostly just sprouting this so my cats can eat the grass. They love it.",
    "The candy is just red, no flavor. Just plastic and chewy. I would never buy them again!",
    "This oatmeal is not good. Its mushy, soft, I don't like it. Quaker Oats is the way to go.",
]


def _requests(model: str) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model)
    encode_inputs(request, [Tensor("TEXT", "BYTES", np.array([r.encode() for r in REVIEWS], dtype=object))])
    return request


async def tokenizer_section(config: BenchConfig) -> Section:
    """Measure the tokenizer service against echo and against in-process tokenization."""
    section = Section(
        title="Tokenizer",
        note=(
            f"One request = the same {len(REVIEWS)} fine-food reviews (TEXT BYTES [{len(REVIEWS)}], max_length "
            f"{DEFAULT_MAX_LENGTH}). The service runs as its own process (`maas run tokenizer`); the closed-loop "
            "client runs in the bench process on the same machine, so both share its cores. `echo` gets the "
            "identical request: the difference is the cost of tokenizing. In-process rows call the tokenizer "
            "directly on one thread, with no serving at all."
        ),
    )
    directory = config.repository / "tokenizer" / "1"
    env = {"MAAS_TOKENIZER_METRICS_PORT": "0", "MAAS_MODEL_REPOSITORY": str(config.repository)}
    async with running("tokenizer", "--port", "0", env=env) as address, grpc.aio.insecure_channel(address) as channel:
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        typed = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        echo_request, tokenizer_request = _requests("echo"), _requests("tokenizer")
        typed_request = tokenizer_pb2.TokenizeRequest(texts=REVIEWS)
        for concurrency in config.concurrencies:
            for label, call in (
                ("echo (v2)", lambda: v2.ModelInfer(echo_request)),
                ("tokenizer (v2 ModelInfer)", lambda: v2.ModelInfer(tokenizer_request)),
                ("tokenizer (typed Tokenize)", lambda: typed.Tokenize(typed_request)),
            ):
                section.rows.append(Row(label, await closed_loop(call, concurrency, config.duration, config.warmup)))
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    raw.enable_truncation(DEFAULT_MAX_LENGTH)
    raw.enable_padding()
    ours = WordPieceTokenizer(directory)
    section.rows.append(
        Row(
            "in-process `tokenizers` encode_batch",
            in_process(lambda: raw.encode_batch(REVIEWS), config.duration, config.warmup),
        )
    )
    section.rows.append(
        Row(
            "in-process WordPieceTokenizer.encode",
            in_process(lambda: ours.encode(REVIEWS), config.duration, config.warmup),
        )
    )
    low = config.concurrencies[0]
    overhead = section.row("tokenizer (v2 ModelInfer)", low).p50_ms - section.row("echo (v2)", low).p50_ms
    best = max(section.row("tokenizer (v2 ModelInfer)", c).throughput for c in config.concurrencies)
    baseline = section.row("in-process `tokenizers` encode_batch", 1).throughput
    section.findings = [
        f"Tokenizing adds {overhead:.2f} ms p50 over `echo` at concurrency {low}.",
        f"Best served throughput is {best / baseline:.0%} of one in-process thread's "
        f"({best:,.0f} vs {baseline:,.0f}/s).",
    ]
    return section
