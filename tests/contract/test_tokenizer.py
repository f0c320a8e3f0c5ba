"""The tokenizer service over gRPC: parity with an independent reference, typed API, v2, bad input."""

from __future__ import annotations

import struct
import unicodedata

import grpc
import numpy as np
import pytest
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2 as pb
from maas.tokenizer.v1 import tokenizer_pb2_grpc
from services.common.server import GrpcServer
from tests.contract.test_v2_echo import assert_status

LONG = "The quick brown fox jumps over the lazy dog near the riverbank. " * 60
TEXTS = [
    "Hello, world!",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u00fcber stra\u00dfe",
    "\u6f22\u5b57\u3068\u304b\u306a \u4e2d\u6587\u5b57 \ud55c\uad6d\uc5b4",
    "emoji \U0001f600\U0001f44d\U0001f3fd and \u2764\ufe0f hearts",
    "control\x00chars\x07 and\ttabs\r\nnewlines\x1b[0m",
    "",
    "   ",
    LONG,
    "Don't stop-believing: U.S.A. costs $3.50 (approx.) #1 @home",
]
PAIRS = ["second", "", "\u6f22", LONG, "x", "pair for an empty text", "", LONG, "ok"]


@pytest.fixture(scope="module")
def reference(model_repository) -> BertTokenizerLegacy:
    """transformers' pure-Python BERT tokenizer built from vocab.txt (not tokenizer.json)."""
    return BertTokenizerLegacy(vocab_file=str(model_repository / "tokenizer" / "1" / "vocab.txt"), do_lower_case=True)


@pytest.fixture
def channel_to(tokenizer_server: GrpcServer):
    return grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}")


@pytest.fixture
async def typed(channel_to):
    async with channel_to as channel:
        yield tokenizer_pb2_grpc.TokenizerServiceStub(channel)


@pytest.fixture
async def v2(tokenizer_server: GrpcServer):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}") as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def normalized(text: str) -> str:
    """Lower-cased, accents stripped: what BERT uncased turns text into before WordPiece."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def bytes_request(texts, pairs=None, max_length=None, datatype="BYTES", shape=None) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name="tokenizer")
    for name, items in (("TEXT", texts), ("TEXT_PAIR", pairs)):
        if items is None:
            continue
        encoded = [t.encode() if isinstance(t, str) else t for t in items]
        request.inputs.add(name=name, datatype=datatype, shape=shape or [len(encoded)])
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(t)) + t for t in encoded))
    if max_length is not None:
        request.parameters["max_length"].int64_param = max_length
    return request


def outputs(response) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(data, "<i8").reshape(list(out.shape))
        for out, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }


@pytest.mark.parametrize("max_length", [256, 16])
@pytest.mark.parametrize("with_pairs", [False, True])
async def test_v2_matches_reference_tokenizer(v2, reference, max_length, with_pairs):
    pairs = PAIRS if with_pairs else None
    response = await v2.ModelInfer(bytes_request(TEXTS, pairs, max_length))
    got = outputs(response)
    want = reference(
        TEXTS, pairs, max_length=max_length, truncation=True, padding="longest", return_token_type_ids=True
    )
    assert got["INPUT_IDS"].tolist() == want["input_ids"]
    assert got["ATTENTION_MASK"].tolist() == want["attention_mask"]
    assert got["TOKEN_TYPE_IDS"].tolist() == want["token_type_ids"]
    assert got["INPUT_IDS"].shape[1] <= max_length
    assert response.model_version == "1"


async def test_default_max_length_is_256(v2):
    got = outputs(await v2.ModelInfer(bytes_request([LONG])))
    assert got["INPUT_IDS"].shape == (1, 256)


async def test_typed_tokenize_matches_reference_with_offsets_in_code_points(typed, reference):
    response = await typed.Tokenize(pb.TokenizeRequest(texts=TEXTS, max_length=64, padding=pb.PADDING_NONE))
    for text, encoding in zip(TEXTS, response.encodings, strict=True):
        want = reference(text, max_length=64, truncation=True)
        assert list(encoding.input_ids) == want["input_ids"]
        assert set(encoding.attention_mask) <= {1}
        spans = zip(encoding.offset_starts, encoding.offset_ends, strict=True)
        for token, (start, end) in zip(encoding.tokens, spans, strict=True):
            piece = text[start:end]
            if token in ("[CLS]", "[SEP]"):
                assert (start, end) == (0, 0)
            elif token == "[UNK]":
                assert piece.strip()
            else:
                assert token.removeprefix("##") in normalized(piece), (token, piece)
    emoji = response.encodings[3]
    unk = list(emoji.tokens).index("[UNK]")
    assert (emoji.offset_starts[unk], emoji.offset_ends[unk]) == (6, 9), "3 code points: 12 UTF-8 bytes, 6 UTF-16 units"


async def test_typed_padding_modes_and_pairs(typed):
    request = pb.TokenizeRequest(texts=["a b c", "a"], text_pairs=["d", "e f"], max_length=12)
    longest = await typed.Tokenize(request)
    assert [len(e.input_ids) for e in longest.encodings] == [7, 6 + 1]
    assert list(longest.encodings[1].token_type_ids) == [0, 0, 0, 1, 1, 1, 0]
    request.padding = pb.PADDING_MAX_LENGTH
    fixed = await typed.Tokenize(request)
    assert [len(e.input_ids) for e in fixed.encodings] == [12, 12]
    assert list(fixed.encodings[1].attention_mask) == [1] * 6 + [0] * 6


async def test_truncation_off_refuses_long_input(typed):
    request = pb.TokenizeRequest(texts=[LONG], max_length=32, truncation=False)
    await assert_status(typed.Tokenize(request), grpc.StatusCode.INVALID_ARGUMENT, "over max_length 32")


async def test_detokenize_round_trip_and_bad_ids(typed):
    encoded = await typed.Tokenize(pb.TokenizeRequest(texts=["Hello there, general Kenobi"]))
    ids = pb.IdSequence(ids=encoded.encodings[0].input_ids)
    decoded = await typed.Detokenize(pb.DetokenizeRequest(sequences=[ids]))
    assert decoded.texts == ["hello there, general kenobi"]
    kept = await typed.Detokenize(pb.DetokenizeRequest(sequences=[ids], keep_special_tokens=True))
    assert kept.texts[0].startswith("[CLS]")
    bad = pb.DetokenizeRequest(sequences=[pb.IdSequence(ids=[101, 30522, -1])])
    await assert_status(typed.Detokenize(bad), grpc.StatusCode.INVALID_ARGUMENT, "outside [0, 30522)")


BAD_V2 = {
    "non-UTF-8 text": (lambda: bytes_request([b"ok", b"caf\xe9"]), "INVALID_ARGUMENT", ["TEXT[1] is not valid UTF-8"]),
    "wrong dtype": (lambda: _int_text(), "INVALID_ARGUMENT", ["'TEXT' must be BYTES, got INT64"]),
    "wrong rank": (lambda: bytes_request(["a", "b"], shape=[2, 1]), "INVALID_ARGUMENT", ["must have shape [-1]"]),
    "too many texts": (lambda: bytes_request(["a"] * 65), "RESOURCE_EXHAUSTED", ["65 texts", "limit is 64"]),
    "text too long": (lambda: bytes_request(["a" * 5000]), "RESOURCE_EXHAUSTED", ["5000 bytes"]),
    "max_length over 512": (lambda: bytes_request(["a"], max_length=513), "INVALID_ARGUMENT", ["[2, 512]", "513"]),
    "pairs do not match": (lambda: bytes_request(["a", "b"], ["c"]), "INVALID_ARGUMENT", ["TEXT_PAIR has 1"]),
    "unknown input": (lambda: _extra_input(), "INVALID_ARGUMENT", ["no input IDS"]),
}


def _int_text():
    request = v2pb.ModelInferRequest(model_name="tokenizer")
    request.inputs.add(name="TEXT", datatype="INT64", shape=[1]).contents.int64_contents.append(7)
    return request


def _extra_input():
    request = bytes_request(["a"])
    request.inputs.add(name="IDS", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", 1) + b"x")
    return request


@pytest.mark.parametrize("case", list(BAD_V2))
async def test_bad_v2_input_gets_documented_status_and_server_keeps_serving(v2, case):
    build, code, fragments = BAD_V2[case]
    await assert_status(v2.ModelInfer(build()), grpc.StatusCode[code], *fragments)
    assert outputs(await v2.ModelInfer(bytes_request(["still here"])))["INPUT_IDS"].shape == (1, 4)


async def test_typed_limits(typed):
    await assert_status(
        typed.Tokenize(pb.TokenizeRequest(texts=["a"] * 65)), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 64"
    )
    await assert_status(
        typed.Tokenize(pb.TokenizeRequest(texts=["a"], max_length=600)), grpc.StatusCode.INVALID_ARGUMENT, "600"
    )
    await assert_status(
        typed.Tokenize(pb.TokenizeRequest(texts=["a", "b"], text_pairs=["c"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text_pairs has 1 elements for 2 in texts",
    )


async def test_invalid_utf8_in_a_typed_string_field_is_invalid_argument(tokenizer_server: GrpcServer):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}") as channel:
        raw_call = channel.unary_unary(
            "/maas.tokenizer.v1.TokenizerService/Tokenize",
            request_serializer=lambda body: body,
            response_deserializer=pb.TokenizeResponse.FromString,
        )
        field_one_bad_utf8 = b"\x0a\x03ab\xff"
        await assert_status(raw_call(field_one_bad_utf8), grpc.StatusCode.INVALID_ARGUMENT, "not a valid protobuf")
        ok = await raw_call(pb.TokenizeRequest(texts=["fine"]).SerializeToString())
        assert len(ok.encodings) == 1


async def test_v2_truncation_parameter(v2):
    request = bytes_request([LONG, "short"], max_length=8)
    assert outputs(await v2.ModelInfer(request))["INPUT_IDS"].shape == (2, 8)
    request.parameters["truncation"].bool_param = False
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "over max_length 8")
    request.parameters["truncation"].string_param = "no"
    await assert_status(v2.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "'truncation' must be a bool")
