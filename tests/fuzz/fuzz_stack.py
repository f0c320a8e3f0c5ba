"""`make fuzz`: hypothesis-generated malformed requests against every service and the gateway of one
`maas up`, on loopback.

Each case is one call to one endpoint: v2 ModelInfer and ModelStreamInfer (streams of good and bad
messages), every other v2 RPC and every typed RPC, sent as a hostile message or as hostile bytes in
place of the serialized message (see `tests/fuzz/strategies.py`). Every status code is counted. The
run fails on any INTERNAL or UNKNOWN (also inside a stream's per-message errors), a call that takes
over 5 s, a service process that dies, or one whose RSS grows by over 100 MB; and afterwards every
endpoint must answer a fixed set of valid requests exactly as it did before the fuzzing.

`FUZZ_CASES` (10,000) cases, seeded by `FUZZ_SEED`; `FUZZ_REPORT` names a JSON file for the counts.
Not collected by `make test` (the file name does not start with `test_`): run it with `make fuzz`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2
from maas.inference import grpc_service_pb2 as pb
from maas.text.v1 import text_pb2
from maas.tokenizer.v1 import tokenizer_pb2
from maas.transformer.v1 import transformer_pb2
from maas.vision.v1 import vision_pb2
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.common.settings import ServiceSettings
from tests.conftest import REPO_ROOT
from tests.fuzz.strategies import Declared, infer_request, mangled, message
from tests.integration.processes import UpStack, alive, maas_up
from tests.integration.test_up import free_ports

CASES = int(os.environ.get("FUZZ_CASES", "10000"))
SEED = int(os.environ.get("FUZZ_SEED", "17"))
HANG_SECONDS = 5.0
RSS_GROWTH_LIMIT = 100 << 20
FAILING = {"INTERNAL", "UNKNOWN"}
V2 = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
TYPED = {
    "tokenizer": [tokenizer_pb2.DESCRIPTOR.services_by_name["TokenizerService"]],
    "vision": [vision_pb2.DESCRIPTOR.services_by_name["VisionService"]],
    "text": [text_pb2.DESCRIPTOR.services_by_name["TextService"]],
    "transformer": [transformer_pb2.DESCRIPTOR.services_by_name["TransformerService"]],
    "gateway": [gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]],
}
WEIGHTS = {"ModelInfer": 6, "ModelStreamInfer": 2}
"""How much more often than other RPCs these are drawn (typed RPCs: 3)."""
OPTIONS = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20)]
REVIEW = "Great taffy at a great price."
REVIEW_IDS = [101, 2307, 11937, 16329, 2012, 1037, 2307, 3976, 1012, 102]


@dataclass(frozen=True)
class Rpc:
    """One method of an endpoint, with its request type and whether it streams requests or responses."""

    path: str
    name: str
    request: object
    client_streaming: bool
    server_streaming: bool


@dataclass
class Outcome:
    code: str
    details: str
    seconds: float
    stream_errors: list[str]


def rpcs(target: str) -> list[Rpc]:
    """Every method `target` serves, each as often as its weight."""
    methods = []
    for service in (V2, *TYPED[target]):
        for method in service.methods:
            rpc = Rpc(
                f"/{service.full_name}/{method.name}",
                method.name,
                method.input_type,
                method.client_streaming,
                method.server_streaming,
            )
            methods += [rpc] * WEIGHTS.get(method.name, 1 if service is V2 else 3)
    return methods


class Stack:
    """`maas up` on free ports, run on an event loop in a thread of its own, and one channel per endpoint."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stop = asyncio.Event()
        self._up: Future[UpStack] = Future()
        self._running = asyncio.run_coroutine_threadsafe(self._hold(), self._loop)
        self.up = self._up.result(timeout=300)
        self.channels = self.run(self._open())

    async def _hold(self) -> None:
        repository = ServiceSettings().model_repository
        try:
            async with maas_up(free_ports(repository), timeout=240) as up:
                self._up.set_result(up)
                await self._stop.wait()
        except BaseException as exc:
            if not self._up.done():
                self._up.set_exception(exc)
            raise

    async def _open(self) -> dict[str, grpc.aio.Channel]:
        return {name: grpc.aio.insecure_channel(address, options=OPTIONS) for name, address in self.up.ready.items()}

    def run(self, coroutine):
        """Run `coroutine` on the stack's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def pids(self) -> dict[str, int]:
        """Service name -> the pid of its process."""
        return {name: self.up.child(name) for name in self.up.ready}

    def call(self, target: str, rpc: Rpc, payload: bytes | list[bytes]) -> Outcome:
        """Send `payload` (the serialized message, or a stream's messages) to `rpc` of `target`."""
        return self.run(self._call(target, rpc, payload))

    async def _call(self, target: str, rpc: Rpc, payload: bytes | list[bytes]) -> Outcome:
        channel = self.channels[target]
        started = time.perf_counter()
        stream_errors: list[str] = []
        try:
            if rpc.client_streaming:
                call = channel.stream_stream(rpc.path, request_serializer=None, response_deserializer=None)
                async for raw in call(iter(payload), timeout=HANG_SECONDS):
                    error = pb.ModelStreamInferResponse.FromString(raw).error_message
                    if error:
                        stream_errors.append(error)
            elif rpc.server_streaming:
                call = channel.unary_stream(rpc.path, request_serializer=None, response_deserializer=None)
                async for _ in call(payload, timeout=HANG_SECONDS):
                    pass
            else:
                call = channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
                await call(payload, timeout=HANG_SECONDS)
        except grpc.aio.AioRpcError as exc:
            return Outcome(exc.code().name, exc.details() or "", time.perf_counter() - started, stream_errors)
        return Outcome("OK", "", time.perf_counter() - started, stream_errors)

    def close(self) -> int:
        """Stop `maas up`; its exit status."""
        self._loop.call_soon_threadsafe(self._stop.set)
        self._running.result(timeout=120)
        status = self.up.process.returncode
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        return status


def rss(pid: int) -> int:
    """Resident bytes of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def declared_models(channel: grpc.aio.Channel) -> dict[str, list[Declared]]:
    """Every model an endpoint serves (from RepositoryIndex) with its declared inputs (ModelMetadata)."""
    index = await channel.unary_unary(
        f"/{V2.full_name}/RepositoryIndex", response_deserializer=pb.RepositoryIndexResponse.FromString
    )(pb.RepositoryIndexRequest().SerializeToString(), timeout=10)
    metadata = channel.unary_unary(
        f"/{V2.full_name}/ModelMetadata", response_deserializer=pb.ModelMetadataResponse.FromString
    )
    models = {}
    for name in sorted({model.name for model in index.models}):
        answer = await metadata(pb.ModelMetadataRequest(name=name).SerializeToString(), timeout=10)
        models[name] = [Declared(t.name, t.datatype, tuple(t.shape)) for t in answer.inputs]
    return models


def v2_request(model: str, *tensors: Tensor) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, tensors)
    return request


def valid_requests() -> list[tuple[str, str, Message, type[Message]]]:
    """(endpoint, method path, request, response type): one valid call of every model and typed RPC of
    every endpoint."""
    shirt = (REPO_ROOT / "docs" / "examples" / "shirt.png").read_bytes()
    with Image.open(REPO_ROOT / "docs" / "examples" / "shirt.png") as image:
        pixels = (np.asarray(image, dtype=np.float32) / 255.0).reshape(1, 1, 28, 28)
    ids = np.array([REVIEW_IDS], dtype=np.int64)
    sequence = (Tensor("INPUT_IDS", "INT64", ids), Tensor("ATTENTION_MASK", "INT64", np.ones_like(ids)))
    text = Tensor("TEXT", "BYTES", np.array([REVIEW.encode()], dtype=object))
    item = common_pb2.TokenizedText(input_ids=REVIEW_IDS)
    infer = f"/{V2.full_name}/ModelInfer"
    v2 = {
        "echo": v2_request("echo", Tensor("X", "INT32", np.arange(3, dtype=np.int32))),
        "tokenizer": v2_request("tokenizer", text),
        "fashion_cnn": v2_request("fashion_cnn", Tensor("IMAGE", "FP32", pixels)),
        "review_lstm": v2_request("review_lstm", *sequence),
        "minilm_embed": v2_request("minilm_embed", *sequence),
        "minilm_sentiment": v2_request("minilm_sentiment", *sequence),
        "review_sentiment_lstm": v2_request("review_sentiment_lstm", text),
        "review_sentiment_minilm": v2_request("review_sentiment_minilm", text),
        "text_embed": v2_request("text_embed", text),
    }
    served = {
        "tokenizer": ["echo", "tokenizer"],
        "vision": ["echo", "fashion_cnn"],
        "text": ["echo", "review_lstm"],
        "transformer": ["echo", "minilm_embed", "minilm_sentiment"],
        "gateway": list(v2),
    }
    calls = [(target, infer, v2[model], pb.ModelInferResponse) for target, models in served.items() for model in models]
    typed = [
        ("tokenizer", tokenizer_pb2.TokenizeRequest(texts=[REVIEW])),
        ("tokenizer", tokenizer_pb2.DetokenizeRequest(sequences=[tokenizer_pb2.IdSequence(ids=REVIEW_IDS)])),
        ("vision", vision_pb2.ClassifyImageRequest(images=[vision_pb2.Image(encoded=shirt)], top_k=3)),
        ("text", text_pb2.ClassifyTextRequest(items=[item])),
        ("transformer", transformer_pb2.EmbedRequest(items=[item])),
        ("transformer", transformer_pb2.ClassifyTextRequest(items=[item])),
        ("gateway", tokenizer_pb2.TokenizeRequest(texts=[REVIEW])),
        ("gateway", gateway_pb2.ClassifyImageRequest(images=[shirt], top_k=3)),
        ("gateway", gateway_pb2.ClassifyTextRequest(texts=[REVIEW], model=gateway_pb2.TEXT_MODEL_LSTM)),
        ("gateway", gateway_pb2.ClassifyTextRequest(texts=[REVIEW], model=gateway_pb2.TEXT_MODEL_TRANSFORMER)),
        ("gateway", gateway_pb2.EmbedRequest(texts=[REVIEW])),
    ]
    for target, request in typed:
        service = TYPED[target][0]
        method = next(m for m in service.methods if m.input_type is request.DESCRIPTOR and not m.server_streaming)
        response = message_factory.GetMessageClass(method.output_type)
        calls.append((target, f"/{service.full_name}/{method.name}", request, response))
    return calls


def answers(stack: Stack) -> list[dict]:
    """Every valid call's answer, as a dict (v2 outputs decoded)."""

    async def ask() -> list[dict]:
        results = []
        for target, path, request, response_type in valid_requests():
            call = stack.channels[target].unary_unary(path, response_deserializer=response_type.FromString)
            response = await call(request.SerializeToString(), timeout=30)
            if isinstance(response, pb.ModelInferResponse):
                results.append({n: t.array.tolist() for n, t in decode_outputs(response).items()})
            else:
                results.append(json_format.MessageToDict(response))
        return results

    return stack.run(ask())


def assert_same(before, after, where: str = "") -> None:
    """Equal, floats within 1e-4."""
    if isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            assert_same(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, list):
        assert len(before) == len(after), where
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            assert_same(b, a, f"{where}[{i}]")
    elif isinstance(before, float):
        assert abs(before - after) <= 1e-4, f"{where}: {before} then {after}"
    else:
        assert before == after, f"{where}: {before!r} then {after!r}"


def assert_sane(results: list[dict]) -> None:
    """The valid calls' answers are right, not only unchanged: the review's ids, embeddings of norm 1,
    probabilities that sum to 1."""
    tokenized = [r["INPUT_IDS"] for r in results if "INPUT_IDS" in r]
    assert tokenized and all(ids == [REVIEW_IDS] for ids in tokenized), tokenized
    for result in results:
        if "EMBEDDING" in result:
            assert abs(float(np.linalg.norm(result["EMBEDDING"])) - 1) < 1e-3
        if "PROBABILITIES" in result:
            assert np.allclose(np.sum(result["PROBABILITIES"], axis=1), 1, atol=1e-4)


def case_strategy(models: dict[str, dict[str, list[Declared]]]) -> st.SearchStrategy:
    """(endpoint, rpc, payload) of one case."""

    targets = st.sampled_from(sorted(models))
    methods = {target: st.sampled_from(rpcs(target)) for target in models}

    @st.composite
    def case(draw: st.DrawFn) -> tuple[str, Rpc, bytes | list[bytes]]:
        target = draw(targets)
        rpc = draw(methods[target])
        if rpc.name in ("ModelInfer", "ModelStreamInfer"):
            valid = infer_request(tuple((name, tuple(inputs)) for name, inputs in sorted(models[target].items())))
        else:
            valid = message(rpc.request)
        one = st.one_of(valid.map(lambda m: m.SerializeToString()), mangled(valid))
        if rpc.client_streaming:
            return target, rpc, draw(st.lists(one, min_size=1, max_size=6))
        return target, rpc, draw(one)

    return case()


def test_fuzz_every_endpoint():
    stack = Stack()
    codes: collections.Counter[str] = collections.Counter()
    by_target: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    stream_errors: collections.Counter[str] = collections.Counter()
    try:
        models = {name: stack.run(declared_models(channel)) for name, channel in stack.channels.items()}
        before = answers(stack)
        assert_sane(before)
        pids = stack.pids()
        memory = {name: rss(pid) for name, pid in pids.items()}

        @seed(SEED)
        @settings(
            max_examples=CASES,
            database=None,
            deadline=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case_strategy(models))
        def fuzz(case: tuple[str, Rpc, bytes | list[bytes]]) -> None:
            target, rpc, payload = case
            outcome = stack.call(target, rpc, payload)
            codes[outcome.code] += 1
            by_target[target][outcome.code] += 1
            stream_errors["error_message"] += len(outcome.stream_errors)
            assert outcome.code not in FAILING, f"{target} {rpc.name}: {outcome.code} {outcome.details}"
            assert outcome.code != "DEADLINE_EXCEEDED" and outcome.seconds < HANG_SECONDS, (
                f"{target} {rpc.name} hung for {outcome.seconds:.1f} s"
            )
            internal = [e for e in outcome.stream_errors if e.startswith("internal error")]
            assert not internal, f"{target} {rpc.name}: a stream message failed with {internal[0]}"

        fuzz()
        assert stack.pids() == pids, "a service process died and was started again"
        assert len(alive(set(pids.values()))) == len(pids)
        grown = {name: rss(pid) - memory[name] for name, pid in pids.items()}
        assert max(grown.values()) <= RSS_GROWTH_LIMIT, {n: f"{g / 2**20:+.0f} MiB" for n, g in grown.items()}
        after = answers(stack)
        assert_same(before, after)
    finally:
        report(codes, by_target, stream_errors["error_message"])
        assert stack.close() == 0


def report(codes: collections.Counter[str], by_target: dict[str, collections.Counter[str]], stream_errors: int) -> None:
    """Print the counts by status code (and write them to `FUZZ_REPORT`, if set)."""
    counts = {
        "cases": sum(codes.values()),
        "seed": SEED,
        "codes": dict(codes.most_common()),
        "by_endpoint": {name: dict(counter.most_common()) for name, counter in sorted(by_target.items())},
        "stream_messages_answered_with_error_message": stream_errors,
    }
    print(json.dumps(counts, indent=2))
    path = os.environ.get("FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
