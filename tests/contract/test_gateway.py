"""The gateway over real services on real sockets: typed API, v2 routing, pipelines, aggregation,
status pass-through, round_robin, and one trace across the hops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from maas.common.v1 import common_pb2
from maas.gateway.v1 import gateway_pb2 as pb
from maas.gateway.v1 import gateway_pb2_grpc
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from maas.transformer.v1 import transformer_pb2, transformer_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.common import telemetry
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.common.server import GrpcServer
from services.gateway.hosting import build_server
from services.gateway.routing import Routing
from services.gateway.spec import GatewaySettings
from services.tokenizer.spec import TokenizerSettings
from services.vision.data import load_split
from tests.conftest import free_port, started
from tests.contract.test_v2_echo import assert_status
from tests.contract.test_vision import png

REVIEWS = [
    "Great taffy at a great price. There was a wide assortment of yummy taffy.",
    "The candy is just red, no flavor. Just plastic and chewy. I would never buy them again!",
    "caf\u00e9 \U0001f600",
]


def routing(**targets: str) -> Routing:
    """A routing of the standard models to the given `name -> host:port or full target` targets."""
    owners = {
        "tokenizer": ["tokenizer"],
        "vision": ["fashion_cnn"],
        "text": ["review_lstm"],
        "transformer": ["minilm_embed", "minilm_sentiment"],
    }
    return Routing.model_validate(
        {
            "targets": {
                name: {"address": address if ":///" in address or address.startswith("ipv4:") else f"dns:///{address}"}
                for name, address in targets.items()
            },
            "models": {model: {"target": name} for name in targets for model in owners[name]},
        }
    )


def every_service(tokenizer: GrpcServer, vision: GrpcServer, text: GrpcServer, transformer: GrpcServer) -> Routing:
    """A routing of the standard models to the four services' servers on loopback."""
    return routing(
        tokenizer=f"127.0.0.1:{tokenizer.port}",
        vision=f"127.0.0.1:{vision.port}",
        text=f"127.0.0.1:{text.port}",
        transformer=f"127.0.0.1:{transformer.port}",
    )


def gateway_settings(**overrides) -> GatewaySettings:
    return GatewaySettings(port=0, metrics_port=0, **overrides)


@pytest.fixture
async def gateway(tokenizer_server, vision_server, transformer_server) -> AsyncIterator[GrpcServer]:
    targets = routing(
        tokenizer=f"127.0.0.1:{tokenizer_server.port}",
        vision=f"127.0.0.1:{vision_server.port}",
        transformer=f"127.0.0.1:{transformer_server.port}",
    )
    async with started(build_server(gateway_settings(stream_chunk_size=4), targets)) as server:
        yield server


@pytest.fixture
async def stubs(gateway, tokenizer_server, vision_server, transformer_server):
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as through,
        grpc.aio.insecure_channel(f"127.0.0.1:{tokenizer_server.port}") as tokenizer,
        grpc.aio.insecure_channel(f"127.0.0.1:{vision_server.port}") as vision,
        grpc.aio.insecure_channel(f"127.0.0.1:{transformer_server.port}") as transformer,
    ):
        yield {
            "typed": gateway_pb2_grpc.GatewayServiceStub(through),
            "v2": grpc_service_pb2_grpc.GRPCInferenceServiceStub(through),
            "tokenizer": tokenizer_pb2_grpc.TokenizerServiceStub(tokenizer),
            "tokenizer_v2": grpc_service_pb2_grpc.GRPCInferenceServiceStub(tokenizer),
            "vision": vision_pb2_grpc.VisionServiceStub(vision),
            "vision_v2": grpc_service_pb2_grpc.GRPCInferenceServiceStub(vision),
            "transformer": transformer_pb2_grpc.TransformerServiceStub(transformer),
            "transformer_v2": grpc_service_pb2_grpc.GRPCInferenceServiceStub(transformer),
        }


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_split("test")[0][:3]


def v2_request(model: str, *tensors: Tensor, **parameters) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model, id="req-7")
    encode_inputs(request, tensors)
    for key, value in parameters.items():
        request.parameters[key].int64_param = value
    return request


def text_tensor(texts: list[str]) -> Tensor:
    return Tensor("TEXT", "BYTES", np.array([t.encode() for t in texts], dtype=object))


async def direct_items(stubs, texts) -> list[common_pb2.TokenizedText]:
    request = tokenizer_pb2.TokenizeRequest(texts=texts, padding=tokenizer_pb2.PADDING_NONE)
    encodings = (await stubs["tokenizer"].Tokenize(request)).encodings
    return [common_pb2.TokenizedText(input_ids=e.input_ids) for e in encodings]


async def test_typed_tokenize_and_classify_image_match_the_services(stubs, images):
    request = tokenizer_pb2.TokenizeRequest(texts=REVIEWS, max_length=16)
    assert await stubs["typed"].Tokenize(request) == await stubs["tokenizer"].Tokenize(request)
    encoded = [png(image[0]) for image in images]
    through = await stubs["typed"].ClassifyImage(pb.ClassifyImageRequest(images=encoded, top_k=3))
    direct = await stubs["vision"].ClassifyImage(
        vision_pb2.ClassifyImageRequest(images=[vision_pb2.Image(encoded=e) for e in encoded], top_k=3)
    )
    assert list(through.results) == list(direct.results) and through.model_version == direct.model_version == "1"
    assert [len(r.labels) for r in through.results] == [3, 3, 3]


async def test_typed_classify_text_and_embed_run_tokenizer_then_model(stubs):
    items = await direct_items(stubs, REVIEWS)
    direct = await stubs["transformer"].ClassifyText(transformer_pb2.ClassifyTextRequest(items=items))
    for model in (pb.TEXT_MODEL_TRANSFORMER, pb.TEXT_MODEL_UNSPECIFIED):
        through = await stubs["typed"].ClassifyText(pb.ClassifyTextRequest(texts=REVIEWS, model=model))
        assert through.model == pb.TEXT_MODEL_TRANSFORMER and through.model_version == "1"
        for got, want in zip(through.results, direct.results, strict=True):
            assert [label.name for label in got.labels] == [label.name for label in want.labels]
            assert [label.probability for label in got.labels] == pytest.approx(
                [label.probability for label in want.labels], abs=1e-5
            )
    top = await stubs["typed"].ClassifyText(pb.ClassifyTextRequest(texts=REVIEWS, top_k=1))
    assert [len(r.labels) for r in top.results] == [1, 1, 1]
    embedded = await stubs["typed"].Embed(pb.EmbedRequest(texts=REVIEWS))
    want = await stubs["transformer"].Embed(transformer_pb2.EmbedRequest(items=items))
    assert embedded.model_version == "1"
    np.testing.assert_allclose([e.values for e in embedded.embeddings], [e.values for e in want.embeddings], atol=2e-5)


async def test_stream_classify_text_answers_every_text_once(stubs):
    texts = [f"{REVIEWS[i % 3]} ({i})" for i in range(11)]
    whole = await stubs["typed"].ClassifyText(pb.ClassifyTextRequest(texts=texts, top_k=1))
    streamed = [r async for r in stubs["typed"].StreamClassifyText(pb.ClassifyTextRequest(texts=texts, top_k=1))]
    assert sorted(r.index for r in streamed) == list(range(11))
    by_index = {r.index: r for r in streamed}
    for i, result in enumerate(whole.results):
        assert by_index[i].result.labels[0].name == result.labels[0].name
        assert by_index[i].model_version == "1"


def sequences(ids: np.ndarray) -> list[Tensor]:
    return [Tensor("INPUT_IDS", "INT64", ids), Tensor("ATTENTION_MASK", "INT64", np.ones_like(ids))]


async def test_v2_routes_every_model_to_its_service(stubs, images):
    ids = np.array([[101, 2307, 11937, 102]], dtype=np.int64)
    cases = [
        ("tokenizer", [text_tensor(REVIEWS)], "tokenizer_v2"),
        ("fashion_cnn", [Tensor("IMAGE", "FP32", images)], "vision_v2"),
        ("minilm_embed", sequences(ids), "transformer_v2"),
        ("minilm_sentiment", sequences(ids), "transformer_v2"),
    ]
    for model, tensors, owner in cases:
        through = await stubs["v2"].ModelInfer(v2_request(model, *tensors))
        direct = await stubs[owner].ModelInfer(v2_request(model, *tensors))
        assert through == direct, model
        assert through.model_name == model and through.id == "req-7" and through.model_version == "1"
        metadata = v2pb.ModelMetadataRequest(name=model)
        assert await stubs["v2"].ModelMetadata(metadata) == await stubs[owner].ModelMetadata(metadata)
        config = v2pb.ModelConfigRequest(name=model)
        assert await stubs["v2"].ModelConfig(config) == await stubs[owner].ModelConfig(config)
        assert (await stubs["v2"].ModelReady(v2pb.ModelReadyRequest(name=model))).ready


async def test_pipelines_take_text(stubs):
    tokens = decode_outputs(await stubs["tokenizer_v2"].ModelInfer(v2_request("tokenizer", text_tensor(REVIEWS))))
    ids, mask = tokens["INPUT_IDS"], tokens["ATTENTION_MASK"]
    for pipeline, model, output in (
        ("review_sentiment_minilm", "minilm_sentiment", "PROBABILITIES"),
        ("text_embed", "minilm_embed", "EMBEDDING"),
    ):
        through = await stubs["v2"].ModelInfer(v2_request(pipeline, text_tensor(REVIEWS)))
        assert through.model_name == pipeline and through.model_version == "1" and through.id == "req-7"
        got = decode_outputs(through)[output].array
        want = decode_outputs(await stubs["transformer_v2"].ModelInfer(v2_request(model, ids, mask)))[output].array
        np.testing.assert_allclose(got, want, atol=2e-5)
        metadata = await stubs["v2"].ModelMetadata(v2pb.ModelMetadataRequest(name=pipeline))
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("TEXT", "BYTES", [-1])]
        assert metadata.outputs[0].name == output and metadata.platform == "maas_pipeline"
        config = (await stubs["v2"].ModelConfig(v2pb.ModelConfigRequest(name=pipeline))).config
        assert (config.name, config.max_batch_size, [list(i.dims) for i in config.input]) == (pipeline, 0, [[-1]])
        assert (await stubs["v2"].ModelReady(v2pb.ModelReadyRequest(name=pipeline))).ready
    short = await stubs["v2"].ModelInfer(v2_request("text_embed", text_tensor(REVIEWS[:1]), max_length=4))
    assert decode_outputs(short)["EMBEDDING"].array.shape == (1, 384)


async def test_index_statistics_and_metadata_aggregate_across_services(stubs):
    index = await stubs["v2"].RepositoryIndex(v2pb.RepositoryIndexRequest())
    names = [m.name for m in index.models]
    assert sorted(names) == sorted(
        [
            "echo",
            "review_sentiment_minilm",
            "text_embed",
            "tokenizer",
            "fashion_cnn",
            "minilm_embed",
            "minilm_sentiment",
        ]
    )
    assert all(m.state == "READY" for m in index.models)
    await stubs["v2"].ModelInfer(v2_request("text_embed", text_tensor(REVIEWS[:1])))
    stats = await stubs["v2"].ModelStatistics(v2pb.ModelStatisticsRequest())
    by_name = {s.name: s for s in stats.model_stats}
    assert {"text_embed", "tokenizer", "minilm_embed", "fashion_cnn", "echo"} <= set(by_name)
    assert by_name["text_embed"].inference_count >= 1 and by_name["minilm_embed"].inference_count >= 1
    one = await stubs["v2"].ModelStatistics(v2pb.ModelStatisticsRequest(name="minilm_embed"))
    assert [s.name for s in one.model_stats] == ["minilm_embed"]
    server = await stubs["v2"].ServerMetadata(v2pb.ServerMetadataRequest())
    assert server.name == "maas" and list(server.extensions) == ["model_repository", "statistics"]
    assert (await stubs["v2"].ServerReady(v2pb.ServerReadyRequest())).ready


async def test_downstream_statuses_pass_through_unchanged(stubs, images):
    bad_image = Tensor("IMAGE", "FP32", images * 2)
    direct = await assert_status(
        stubs["vision_v2"].ModelInfer(v2_request("fashion_cnn", bad_image)), grpc.StatusCode.INVALID_ARGUMENT
    )
    through = await assert_status(
        stubs["v2"].ModelInfer(v2_request("fashion_cnn", bad_image)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert through == direct
    pinned = v2_request("minilm_embed", *sequences(np.array([[101, 102]])))
    pinned.model_version = "9"
    await assert_status(stubs["v2"].ModelInfer(pinned), grpc.StatusCode.NOT_FOUND, "no version '9'")
    too_many = text_tensor(["a"] * 65)
    await assert_status(
        stubs["v2"].ModelInfer(v2_request("text_embed", too_many)), grpc.StatusCode.RESOURCE_EXHAUSTED, "65 texts"
    )
    not_utf8 = Tensor("TEXT", "BYTES", np.array([b"ok", b"\xff"], dtype=object))
    await assert_status(
        stubs["v2"].ModelInfer(v2_request("review_sentiment_minilm", not_utf8)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TEXT[1] is not valid UTF-8",
    )
    await assert_status(
        stubs["v2"].ModelInfer(v2_request("nope", text_tensor(["x"]))),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'",
        "text_embed",
    )
    await assert_status(
        stubs["typed"].ClassifyText(pb.ClassifyTextRequest()), grpc.StatusCode.INVALID_ARGUMENT, "no texts"
    )
    await assert_status(
        stubs["typed"].ClassifyText(pb.ClassifyTextRequest(texts=["x"], model=pb.TEXT_MODEL_LSTM)),
        grpc.StatusCode.NOT_FOUND,
        "'review_lstm' is not routed",
    )
    await assert_status(
        stubs["typed"].ClassifyImage(pb.ClassifyImageRequest(images=[b"GIF89a"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "images[0] is not a readable PNG or JPEG",
    )
    await assert_status(
        stubs["typed"].ClassifyText(pb.ClassifyTextRequest(texts=["x"], model_version="5")),
        grpc.StatusCode.NOT_FOUND,
        "no version '5'",
    )
    ok = await stubs["typed"].ClassifyText(pb.ClassifyTextRequest(texts=REVIEWS[:1]))
    assert len(ok.results) == 1


async def test_stream_infer_routes_each_request_and_reports_failures_in_order(stubs, images):
    requests = [
        v2_request("fashion_cnn", Tensor("IMAGE", "FP32", images)),
        v2_request("nope", text_tensor(["x"])),
        v2_request("text_embed", text_tensor(REVIEWS[:1])),
        v2_request("echo", text_tensor(["x"])),
    ]

    async def feed():
        for request in requests:
            yield request

    answers = [a async for a in stubs["v2"].ModelStreamInfer(feed())]
    assert [a.infer_response.model_name for a in answers] == ["fashion_cnn", "nope", "text_embed", "echo"]
    assert [bool(a.error_message) for a in answers] == [False, True, False, False]
    assert "unknown model 'nope'" in answers[1].error_message


async def test_a_target_that_is_down_is_unavailable_and_reported_in_the_index(tokenizer_server):
    closed = free_port()
    targets = routing(tokenizer=f"127.0.0.1:{tokenizer_server.port}", transformer=f"127.0.0.1:{closed}")
    async with (
        started(build_server(gateway_settings(), targets)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await assert_status(
            v2.ModelInfer(v2_request("text_embed", text_tensor(["x"])), timeout=10), grpc.StatusCode.UNAVAILABLE
        )
        index = await v2.RepositoryIndex(v2pb.RepositoryIndexRequest())
        states = {m.name: (m.state, m.reason) for m in index.models}
        assert states["tokenizer"][0] == "READY"
        assert states["minilm_embed"][0] == "UNAVAILABLE" and states["minilm_embed"][1].startswith("transformer: ")
        assert not (await v2.ModelReady(v2pb.ModelReadyRequest(name="text_embed"))).ready
        ready = await v2.RepositoryIndex(v2pb.RepositoryIndexRequest(ready=True))
        assert "minilm_embed" not in [m.name for m in ready.models]
        tokens = await v2.ModelInfer(v2_request("tokenizer", text_tensor(["still serving"])))
        assert tokens.model_name == "tokenizer"


async def test_round_robin_spreads_calls_over_every_address(model_repository: Path):
    settings = TokenizerSettings(port=0, metrics_port=0, model_repository=model_repository)
    from services.common.server import build_server as model_server
    from services.tokenizer.spec import SPEC

    async with started(model_server(SPEC, settings)) as one, started(model_server(SPEC, settings)) as two:
        targets = routing(tokenizer=f"ipv4:127.0.0.1:{one.port},127.0.0.1:{two.port}")
        async with (
            started(build_server(gateway_settings(), targets)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(10):
                await v2.ModelInfer(v2_request("tokenizer", text_tensor(["spread me"])))
        counts = []
        for backend in (one, two):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
                stats = await grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                    v2pb.ModelStatisticsRequest(name="tokenizer")
                )
                counts.append(stats.model_stats[0].inference_count)
    assert sum(counts) == 10 and min(counts) >= 3, counts


@pytest.fixture
def spans() -> AsyncIterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(provider)
    yield exporter
    telemetry.shutdown()


async def test_one_trace_holds_gateway_tokenizer_and_model_spans(spans, stubs, hosting):
    await stubs["typed"].ClassifyText(
        pb.ClassifyTextRequest(texts=REVIEWS[:2]), metadata=(("x-request-id", "trace-me"),)
    )
    await asyncio.sleep(0.1)
    finished = spans.get_finished_spans()
    root = next(s for s in finished if s.name == "maas.gateway.v1.GatewayService/ClassifyText")
    assert root.parent is None and root.attributes["maas.request_id"] == "trace-me"
    trace = [s for s in finished if s.context.trace_id == root.context.trace_id]
    by_id = {s.context.span_id: s for s in trace}
    servers = {s.name: s for s in trace if s.kind.name == "SERVER" and s is not root}
    assert set(servers) == {
        "inference.GRPCInferenceService/ModelInfer",
        "maas.transformer.v1.TransformerService/ClassifyText",
    }
    for server in servers.values():
        client = by_id[server.parent.span_id]
        assert client.kind.name == "CLIENT" and client.name == server.name
        assert client.parent.span_id == root.context.span_id
        assert server.attributes["maas.request_id"] == "trace-me"
    model = servers["maas.transformer.v1.TransformerService/ClassifyText"]
    assert model.attributes["maas.model"] == "minilm_sentiment"
    if hosting == "grpc":  # under ray the batcher runs in a replica, which records no spans (README)
        assert model.attributes["maas.batch_size"] >= 2 and "maas.queue_us" in model.attributes


async def test_lstm_through_the_gateway(tokenizer_server, text_server, transformer_server):
    targets = routing(
        tokenizer=f"127.0.0.1:{tokenizer_server.port}",
        text=f"127.0.0.1:{text_server.port}",
        transformer=f"127.0.0.1:{transformer_server.port}",
    )
    async with (
        started(build_server(gateway_settings(default_text_model="lstm"), targets)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        typed = gateway_pb2_grpc.GatewayServiceStub(channel)
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for model in (pb.TEXT_MODEL_LSTM, pb.TEXT_MODEL_UNSPECIFIED):
            response = await typed.ClassifyText(pb.ClassifyTextRequest(texts=REVIEWS, model=model))
            assert response.model == pb.TEXT_MODEL_LSTM and len(response.results) == 3
            for result in response.results:
                assert sum(label.probability for label in result.labels) == pytest.approx(1.0, abs=1e-5)
        streamed = [r async for r in typed.StreamClassifyText(pb.ClassifyTextRequest(texts=REVIEWS * 5, model=1))]
        assert sorted(r.index for r in streamed) == list(range(15))
        probabilities = decode_outputs(await v2.ModelInfer(v2_request("review_sentiment_lstm", text_tensor(REVIEWS))))
        assert probabilities["PROBABILITIES"].array.shape == (3, 2)
        routed = await v2.ModelMetadata(v2pb.ModelMetadataRequest(name="review_lstm"))
        assert [t.name for t in routed.inputs] == ["INPUT_IDS", "ATTENTION_MASK"]
