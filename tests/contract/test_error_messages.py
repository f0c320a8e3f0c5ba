"""Error details speak to the user: a sweep of bad inputs over every service, directly and through the
gateway, over the typed APIs, v2 and HTTP, checking each refusal's details for Python object reprs,
tracebacks and internal names, and that they say what was wrong."""

from __future__ import annotations

import re
import struct

import aiohttp
import grpc
import numpy as np
import pytest

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.text.v1 import text_pb2, text_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.transformer.v1 import transformer_pb2, transformer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.common.codec import Tensor, encode_inputs
from services.gateway.hosting import build_server
from tests.conftest import started
from tests.contract.test_gateway import every_service, gateway_settings

LEAKS = re.compile(r"object at 0x|Traceback|<class |<module |services\.\w|_pb2|Error\(|\bself\b|NoneType")
"""What a user must never read in details(): Python reprs, tracebacks, module and class names."""
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
PNG = b"\x89PNG\r\n\x1a\n"


def v2(model: str, *tensors: Tensor, raw: list[bytes] | None = None, **parameters) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model)
    encode_inputs(request, tensors)
    if raw is not None:
        del request.raw_input_contents[:]
        request.raw_input_contents.extend(raw)
    for key, value in parameters.items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        elif isinstance(value, int):
            request.parameters[key].int64_param = value
        else:
            request.parameters[key].string_param = value
    return request


def texts(*items: bytes) -> Tensor:
    return Tensor("TEXT", "BYTES", np.array(items, dtype=object))


def ids(array) -> list[Tensor]:
    array = np.asarray(array, dtype=np.int64)
    return [Tensor("INPUT_IDS", "INT64", array), Tensor("ATTENTION_MASK", "INT64", np.ones_like(array))]


IMAGE = Tensor("IMAGE", "FP32", np.full((1, 1, 28, 28), 0.5, dtype=np.float32))
V2_CALLS = {
    "unknown model": v2("nope", IMAGE),
    "unknown version": v2pb.ModelInferRequest(model_name="fashion_cnn", model_version="99"),
    "image: wrong datatype": v2("fashion_cnn", Tensor("IMAGE", "FP64", np.zeros((1, 1, 28, 28)))),
    "image: wrong shape": v2("fashion_cnn", Tensor("IMAGE", "FP32", np.zeros((1, 28, 28), dtype=np.float32))),
    "image: out of range": v2("fashion_cnn", Tensor("IMAGE", "FP32", np.full((1, 1, 28, 28), 9, dtype=np.float32))),
    "image: NaN": v2("fashion_cnn", Tensor("IMAGE", "FP32", np.full((1, 1, 28, 28), np.nan, dtype=np.float32))),
    "image: short raw data": v2("fashion_cnn", IMAGE, raw=[b"\0" * 10]),
    "image: extra input": v2("fashion_cnn", IMAGE, Tensor("EXTRA", "INT8", np.zeros(1, dtype=np.int8))),
    "image: no input": v2pb.ModelInferRequest(model_name="fashion_cnn"),
    "unknown datatype": v2pb.ModelInferRequest(
        model_name="fashion_cnn", inputs=[v2pb.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="FP8")]
    ),
    "text: not UTF-8": v2("tokenizer", texts(b"\xff\xfe")),
    "text: bad BYTES prefix": v2("tokenizer", texts(b"ok"), raw=[struct.pack("<I", 99) + b"ok"]),
    "text: max_length too small": v2("tokenizer", texts(b"ok"), max_length=1),
    "text: max_length a word": v2("tokenizer", texts(b"ok"), max_length="long"),
    "text: truncation a number": v2("tokenizer", texts(b"ok"), truncation=7),
    "ids: outside the vocabulary": v2("minilm_embed", *ids([[101, 10**9, 102]])),
    "ids: over 512 tokens": v2("review_lstm", *ids([[101] * 600])),
    "ids: mask mismatch": v2(
        "minilm_sentiment",
        Tensor("INPUT_IDS", "INT64", np.ones((1, 3), dtype=np.int64)),
        Tensor("ATTENTION_MASK", "INT64", np.ones((1, 4), dtype=np.int64)),
    ),
    "pipeline: not UTF-8": v2("text_embed", texts(b"\xc3\x28")),
    "pipeline: bad model_version": v2("review_sentiment_minilm", texts(b"ok"), model_version=True),
    "echo: bad delay": v2("echo", texts(b"ok"), delay_ms=-5),
    "echo: bad version parameter": v2pb.ModelInferRequest(model_name="echo", model_version="x"),
}


async def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def check(what: str, code: grpc.StatusCode, details: str) -> None:
    assert code in REFUSALS, (what, code, details)
    assert len(details) > 15 and not LEAKS.search(details), (what, details)


@pytest.mark.parametrize("hosting", ["grpc"], indirect=True)
async def test_bad_inputs_get_details_that_speak_to_the_user(
    tokenizer_server, vision_server, text_server, transformer_server, hosting
):
    targets = every_service(tokenizer_server, vision_server, text_server, transformer_server)
    async with (
        started(build_server(gateway_settings(), targets)) as gateway,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as through,
        grpc.aio.insecure_channel(f"127.0.0.1:{vision_server.port}") as vision,
        grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}") as tokenizer,
        grpc.aio.insecure_channel(f"127.0.0.1:{text_server.port}") as text,
        grpc.aio.insecure_channel(f"127.0.0.1:{transformer_server.port}") as transformer,
        aiohttp.ClientSession() as http,
    ):
        owners = {"fashion_cnn": vision, "tokenizer": tokenizer, "review_lstm": text, "nope": vision}
        owners |= {"minilm_embed": transformer, "minilm_sentiment": transformer, "echo": vision}
        for what, request in V2_CALLS.items():
            for channel in (through, owners.get(request.model_name)):
                if channel is None:
                    continue
                code, details = await refused(
                    grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
                )
                check(what, code, details)
        items = [common_pb2.TokenizedText(input_ids=[101, 99999999, 102])]
        typed = {
            "garbage image": vision_pb2_grpc.VisionServiceStub(vision).ClassifyImage(
                vision_pb2.ClassifyImageRequest(images=[vision_pb2.Image(encoded=b"hello world")])
            ),
            "truncated PNG": vision_pb2_grpc.VisionServiceStub(vision).ClassifyImage(
                vision_pb2.ClassifyImageRequest(images=[vision_pb2.Image(encoded=PNG + b"\0garbage" * 20)])
            ),
            "raw image of the wrong size": vision_pb2_grpc.VisionServiceStub(vision).ClassifyImage(
                vision_pb2.ClassifyImageRequest(
                    images=[vision_pb2.Image(raw=vision_pb2.RawImage(pixels=[0.5] * 10, height=2, width=5))]
                )
            ),
            "garbage image, gateway": gateway_pb2_grpc.GatewayServiceStub(through).ClassifyImage(
                gateway_pb2.ClassifyImageRequest(images=[b"GIF89a not really"])
            ),
            "no texts, gateway": gateway_pb2_grpc.GatewayServiceStub(through).ClassifyText(
                gateway_pb2.ClassifyTextRequest()
            ),
            "max_length 1": tokenizer_pb2_grpc.TokenizerServiceStub(tokenizer).Tokenize(
                tokenizer_pb2.TokenizeRequest(texts=["x"], max_length=1)
            ),
            "detokenize out of vocabulary": tokenizer_pb2_grpc.TokenizerServiceStub(tokenizer).Detokenize(
                tokenizer_pb2.DetokenizeRequest(sequences=[tokenizer_pb2.IdSequence(ids=[-4])])
            ),
            "lstm ids out of vocabulary": text_pb2_grpc.TextServiceStub(text).ClassifyText(
                text_pb2.ClassifyTextRequest(items=items)
            ),
            "embed no items": transformer_pb2_grpc.TransformerServiceStub(transformer).Embed(
                transformer_pb2.EmbedRequest()
            ),
            "embed unknown version": transformer_pb2_grpc.TransformerServiceStub(transformer).Embed(
                transformer_pb2.EmbedRequest(items=items, model_version="42")
            ),
        }
        for what, call in typed.items():
            check(what, *await refused(call))
        base = f"http://127.0.0.1:{gateway.http.port}/v2/models"
        for what, (path, body) in {
            "http: no JSON": ("fashion_cnn/infer", b"{"),
            "http: out of range": (
                "fashion_cnn/infer",
                b'{"inputs": [{"name": "IMAGE", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": '
                + str([7.0] * 784).encode()
                + b"}]}",
            ),
            "http: not UTF-8 bytes": (
                "text_embed/infer",
                b'{"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", '
                + b'"parameters": {"binary_data_size": 6}}]}'
                + struct.pack("<I", 2)
                + b"\xff\xfe",
            ),
        }.items():
            headers = {"Inference-Header-Content-Length": str(body.index(b"}]}") + 3)} if b"binary" in body else {}
            async with http.post(f"{base}/{path}", data=body, headers=headers) as response:
                error = (await response.json())["error"]
                assert response.status == 400 and len(error) > 15 and not LEAKS.search(error), (what, error)
