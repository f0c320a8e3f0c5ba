"""The whole local stack as a user runs it (`maas up`: every service and the gateway as processes),
reached only through the gateway: stock tritonclient, the typed stubs, `maas infer`, deadlines that
cancel downstream work, and one trace across processes collected by an in-test OTLP receiver."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from maas.gateway.v1 import gateway_pb2 as pb
from maas.gateway.v1 import gateway_pb2_grpc
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.tokenizer.v1 import tokenizer_pb2
from services.common.codec import Tensor, encode_inputs
from services.vision.data import LABELS, load_split
from tests.conftest import PYTHON, REPO_ROOT, free_port, terminate
from tests.contract.test_vision import png
from tests.integration.test_up import free_ports
from tests.interop.samples import REVIEWS
from tests.interop.test_tritonclient import run_script

MODELS = [
    "echo",
    "tokenizer",
    "fashion_cnn",
    "minilm_embed",
    "minilm_sentiment",
    "review_sentiment_minilm",
    "text_embed",
]
LSTM_MODELS = ["review_lstm", "review_sentiment_lstm"]


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that keeps every span it receives, with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((attributes.get("service.name", ""), span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def received(self) -> list[tuple[str, object]]:
        with self._lock:
            return list(self.spans)


@dataclass
class Stack:
    ready: dict[str, str]
    transformer_metrics: int
    http: str
    receiver: OtlpReceiver
    process: subprocess.Popen = field(repr=False)

    @property
    def gateway(self) -> str:
        return self.ready["gateway"]


@pytest.fixture(scope="module")
def stack(model_repository: Path) -> Iterator[Stack]:
    receiver = OtlpReceiver()
    metrics = free_port()
    http = free_port()
    env = {
        **os.environ,
        **free_ports(model_repository),
        "MAAS_TRANSFORMER_METRICS_PORT": str(metrics),
        "MAAS_GATEWAY_HTTP_PORT": str(http),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    process = subprocess.Popen(
        [PYTHON, "-m", "services.cli.main", "up"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    ready: dict[str, str] = {}
    try:
        for line in process.stdout:
            words = line.split()
            if words[:2] == ["READY", "all"]:
                break
            if words[:1] == ["READY"]:
                ready[words[1]] = words[2]
        assert "gateway" in ready, f"maas up stopped before READY all: {ready}"
        yield Stack(ready, metrics, f"127.0.0.1:{http}", receiver, process)
    finally:
        terminate(process)
        receiver.server.stop(0)


@pytest.fixture(scope="module")
def shirt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A Fashion-MNIST test image as a PNG file, and its true label."""
    images, labels = load_split("test")
    path = tmp_path_factory.mktemp("images") / "shirt.png"
    index = int(np.flatnonzero(labels == LABELS.index("Trouser"))[0])
    path.write_bytes(png(images[index, 0]))
    return path, LABELS[labels[index]]


async def test_stock_tritonclient_reaches_every_model_and_pipeline(stack: Stack):
    seen = await run_script("tritonclient_gateway.py", stack.gateway, *MODELS)
    assert seen["server"]["name"] == "maas"
    indexed = {m["name"] for m in seen["index"]}
    assert set(MODELS) <= indexed
    for model in MODELS:
        got = seen["models"][model]
        assert got["ready"] and got["id"] == f"id-{model}" and got["version"] == "1", (model, got)
    assert seen["models"]["echo"]["value"] == [
        "Great taffy at a great price.",
        "The candy is just red, no flavor. Never again!",
    ]
    assert seen["models"]["tokenizer"]["value"][0][:4] == [101, 2307, 11937, 16329]
    assert seen["models"]["fashion_cnn"]["shape"] == [2, 10]
    for model in ("minilm_embed", "text_embed"):
        assert seen["models"][model]["shape"] == [2, 384]
        assert np.linalg.norm(seen["models"][model]["value"], axis=1) == pytest.approx([1, 1], abs=1e-4)
    for model in ("minilm_sentiment", "review_sentiment_minilm"):
        assert np.sum(seen["models"][model]["value"], axis=1) == pytest.approx([1, 1], abs=1e-5)
    assert seen["models"]["text_embed"]["inputs"] == ["TEXT"]
    assert seen["models"]["minilm_embed"]["inputs"] == ["INPUT_IDS", "ATTENTION_MASK"]
    assert {"tokenizer", "fashion_cnn", "minilm_embed", "text_embed"} <= set(seen["statistics"])
    assert seen["error"]["status"] == "StatusCode.INVALID_ARGUMENT" and "[0, 1]" in seen["error"]["message"]
    assert seen["unknown"]["status"] == "StatusCode.NOT_FOUND" and "no_such_model" in seen["unknown"]["message"]


async def test_stock_tritonclient_http_reaches_every_model_and_pipeline(stack: Stack):
    seen = await run_script("tritonclient_http.py", stack.http, *MODELS, *LSTM_MODELS)
    assert seen["live"] and seen["ready"] and seen["server"]["name"] == "maas"
    assert {*MODELS, *LSTM_MODELS} <= {m["name"] for m in seen["index"]}
    for model in (*MODELS, *LSTM_MODELS):
        got = seen["models"][model]
        assert got["ready"] and got["id"] == f"id-{model}" and got["gzip_equal"], (model, got)
        assert got["binary"] == got["json"], model
    assert seen["models"]["echo"]["json"] == [r.decode() for r in REVIEWS]
    assert seen["models"]["tokenizer"]["json"][0][:4] == [101, 2307, 11937, 16329]
    assert seen["models"]["fashion_cnn"]["shape"] == [2, 10]
    for model in ("minilm_embed", "text_embed"):
        assert np.linalg.norm(seen["models"][model]["json"], axis=1) == pytest.approx([1, 1], abs=1e-4)
    for model in ("minilm_sentiment", "review_sentiment_minilm", "review_lstm", "review_sentiment_lstm"):
        assert np.sum(seen["models"][model]["json"], axis=1) == pytest.approx([1, 1], abs=1e-5)
    assert seen["models"]["text_embed"]["inputs"] == ["TEXT"]
    assert {"tokenizer", "fashion_cnn", "minilm_embed", "text_embed"} <= set(seen["statistics"])
    assert seen["out_of_range"]["status"] == "400" and "[0, 1]" in seen["out_of_range"]["message"]
    assert seen["unknown"]["status"] == "404" and "no_such_model" in seen["unknown"]["message"]
    assert seen["unknown_version"]["status"] == "404" and "'9'" in seen["unknown_version"]["message"]
    assert seen["wrong_input"]["status"] == "400" and "IMAGE" in seen["wrong_input"]["message"]
    assert seen["unknown_ready"] is False


def test_curl_classifies_a_review_with_json(stack: Stack):
    body = json.dumps(
        {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["Great taffy at a great price."]}]}
    )
    command = ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "--data", body]
    url = f"http://{stack.http}/v2/models/review_sentiment_minilm/infer"
    answer = json.loads(subprocess.run([*command, url], capture_output=True, text=True, check=True, timeout=30).stdout)
    (output,) = answer["outputs"]
    assert answer["model_name"] == "review_sentiment_minilm" and output["name"] == "PROBABILITIES"
    assert output["shape"] == [1, 2] and sum(output["data"]) == pytest.approx(1, abs=1e-5)
    refused = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data",
            body,
            f"http://{stack.http}/v2/models/x/infer",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert refused.stdout == "404"


async def test_typed_stubs_reach_every_rpc(stack: Stack, shirt):
    path, label = shirt
    async with grpc.aio.insecure_channel(stack.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        tokens = await stub.Tokenize(tokenizer_pb2.TokenizeRequest(texts=["through the gateway"]))
        assert tokens.encodings[0].tokens == ["[CLS]", "through", "the", "gateway", "[SEP]"]
        image = await stub.ClassifyImage(pb.ClassifyImageRequest(images=[path.read_bytes()], top_k=2))
        assert image.results[0].labels[0].name == label and image.model_version == "1"
        text = await stub.ClassifyText(pb.ClassifyTextRequest(texts=["Great taffy at a great price."]))
        assert text.model == pb.TEXT_MODEL_TRANSFORMER and {lb.name for lb in text.results[0].labels} == {
            "great",
            "other",
        }
        embed = await stub.Embed(pb.EmbedRequest(texts=["a", "b"]))
        assert [len(e.values) for e in embed.embeddings] == [384, 384]
        texts = [f"review number {i}" for i in range(40)]
        streamed = [r async for r in stub.StreamClassifyText(pb.ClassifyTextRequest(texts=texts, top_k=1))]
        assert sorted(r.index for r in streamed) == list(range(40))


def cancelled_count(port: int, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf'^maas_batch_cancelled_total{{model="{model}",version="[^"]*"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_an_expired_deadline_cancels_the_work_downstream(stack: Stack):
    review = "This product arrived broken and the seller never answered my emails, twice. " * 20
    request = v2pb.ModelInferRequest(model_name="text_embed")
    encode_inputs(request, [Tensor("TEXT", "BYTES", np.array([review.encode()] * 32, dtype=object))])
    async with grpc.aio.insecure_channel(stack.gateway) as channel:
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        warm = v2pb.ModelInferRequest(model_name="text_embed")
        encode_inputs(warm, [Tensor("TEXT", "BYTES", np.array([b"warm up"], dtype=object))])
        await v2.ModelInfer(warm, timeout=30)
        before = cancelled_count(stack.transformer_metrics, "minilm_embed")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await v2.ModelInfer(request, timeout=0.05)
        expired = time.monotonic()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        while cancelled_count(stack.transformer_metrics, "minilm_embed") == before:
            assert time.monotonic() - expired < 1.0, "the transformer did not count the cancelled call within 1 s"
            await asyncio.sleep(0.02)


async def test_one_trace_spans_gateway_tokenizer_and_model_processes(stack: Stack):
    async with grpc.aio.insecure_channel(stack.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        await stub.ClassifyText(
            pb.ClassifyTextRequest(texts=["Traced review."]), metadata=(("x-request-id", "e2e-trace"),)
        )
    spans: dict[str, list] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        roots = [
            s
            for _, s in stack.receiver.received()
            if s.name == "maas.gateway.v1.GatewayService/ClassifyText"
            and any(a.key == "maas.request_id" and a.value.string_value == "e2e-trace" for a in s.attributes)
        ]
        if roots:
            trace = [(svc, s) for svc, s in stack.receiver.received() if s.trace_id == roots[0].trace_id]
            spans = {}
            for service, span in trace:
                spans.setdefault(service, []).append(span)
            if {"gateway", "tokenizer", "transformer"} <= set(spans):
                break
        await asyncio.sleep(0.1)
    assert {"gateway", "tokenizer", "transformer"} <= set(spans), spans.keys()
    root = roots[0]
    assert not root.parent_span_id
    gateway = {s.span_id: s for s in spans["gateway"]}
    for service, name in (
        ("tokenizer", "inference.GRPCInferenceService/ModelInfer"),
        ("transformer", "maas.transformer.v1.TransformerService/ClassifyText"),
    ):
        (server,) = [s for s in spans[service] if s.name == name]
        client = gateway[server.parent_span_id]
        assert client.name == name and client.parent_span_id == root.span_id


def maas_infer(address: str, *args: str) -> str:
    command = [PYTHON, "-m", "services.cli.main", "infer", *args, "--address", address]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60).stdout


def test_maas_infer_prints_readable_results(stack: Stack, shirt):
    path, label = shirt
    text = maas_infer(stack.gateway, "text", "Great taffy at a great price.")
    assert re.search(
        r"^Great taffy at a great price\.\n  (great|other) +\d+\.\d\d%\n  (great|other) +\d+\.\d\d%\n", text
    )
    assert re.search(r"^\(transformer model, version 1; \d+\.\d ms via 127\.0\.0\.1:\d+\)$", text, re.M)
    image = maas_infer(stack.gateway, "image", str(path), "--top-k", "1")
    assert image.splitlines()[1].split()[0] == label and "fashion_cnn, version 1" in image
    embed = maas_infer(stack.gateway, "embed", "a sentence")
    assert re.search(r"^  384 dimensions, norm 1\.000: \[", embed, re.M)


def test_maas_infer_json_carries_every_value(stack: Stack, shirt):
    text = json.loads(maas_infer(stack.gateway, "text", "Great taffy at a great price.", "No.", "--json"))
    assert (text["model"], text["version"], text["address"]) == ("transformer", "1", stack.gateway)
    assert [r["input"] for r in text["results"]] == ["Great taffy at a great price.", "No."]
    for result in text["results"]:
        assert {label["name"] for label in result["labels"]} == {"great", "other"}
        assert sum(label["probability"] for label in result["labels"]) == pytest.approx(1, abs=1e-5)
    path, label = shirt
    image = json.loads(maas_infer(stack.gateway, "image", str(path), "--top-k", "1", "--json"))
    assert image["model"] == "fashion_cnn" and image["results"][0]["labels"][0]["name"] == label
    embed = json.loads(maas_infer(stack.gateway, "embed", "a sentence", "--json"))
    assert np.linalg.norm(embed["results"][0]["embedding"]) == pytest.approx(1, abs=1e-4) and embed["milliseconds"] > 0


async def test_lstm_models_and_pipeline_through_the_gateway(stack: Stack):
    seen = await run_script("tritonclient_gateway.py", stack.gateway, *LSTM_MODELS)
    for model in LSTM_MODELS:
        assert seen["models"][model]["shape"] == [2, 2]
        assert np.sum(seen["models"][model]["value"], axis=1) == pytest.approx([1, 1], abs=1e-5)
    text = maas_infer(stack.gateway, "text", "Great taffy at a great price.", "--model", "lstm")
    assert re.search(r"^\(lstm model, version \d+; ", text, re.M)


async def test_maas_status_lists_every_model_version_with_device_and_load(stack: Stack):
    slow = v2pb.ModelInferRequest(model_name="echo")
    encode_inputs(slow, [Tensor("X", "INT32", np.array([1], dtype=np.int32))])
    slow.parameters["delay_ms"].int64_param = 3000
    async with grpc.aio.insecure_channel(stack.gateway) as channel:
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = [asyncio.ensure_future(v2.ModelInfer(slow, timeout=30)) for _ in range(3)]
        await asyncio.sleep(0.5)
        status = await asyncio.to_thread(maas_status, stack.gateway, "--json")
        await asyncio.gather(*calls)
    document = json.loads(status)
    servers = {server["id"]: server for server in document["servers"]}
    assert sorted(server["service"] for server in servers.values()) == [
        "gateway",
        "text",
        "tokenizer",
        "transformer",
        "vision",
    ]
    for service, address in stack.ready.items():
        (server,) = [s for s in servers.values() if s["service"] == service]
        assert server["address"] == address and server["ready"] and server["pid"] > 0 and server["hosting"] == "grpc"
    versions = {(v["model"], v["version"], servers[v["server"]]["service"]): v for v in document["versions"]}
    for model, service in (
        ("fashion_cnn", "vision"),
        ("minilm_embed", "transformer"),
        ("minilm_sentiment", "transformer"),
        ("review_lstm", "text"),
    ):
        entry = versions[(model, "1", service)]
        assert entry["state"] == "READY" and entry["device"] == "cpu" and int(entry["execution_count"]) >= 1, entry
    assert versions[("tokenizer", "1", "tokenizer")]["state"] == "READY"
    assert {("review_lstm", "2", "text"), ("text_embed", "1", "gateway"), ("echo", "1", "vision")} <= set(versions)
    gateway = versions[("echo", "1", "gateway")]
    assert gateway["in_flight"] == 3, "the slow calls are in flight at the gateway's echo"
    (server,) = [s for s in servers.values() if s["service"] == "gateway"]
    assert server["calls_in_flight"] >= 4
    table = maas_status(stack.gateway).splitlines()
    assert table[0].split()[:4] == ["MODEL", "VERSION", "STATE", "DEVICE"]
    assert any(line.split()[:4] == ["fashion_cnn", "1", "READY", "cpu"] for line in table)


def maas_status(address: str, *args: str) -> str:
    command = [PYTHON, "-m", "services.cli.main", "status", "--address", address, *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60).stdout


def test_maas_bench_loads_a_running_gateway(stack: Stack):
    for model in ("review_sentiment_minilm", "review_sentiment_lstm", "text_embed"):
        command = [PYTHON, "-m", "services.cli.main", "bench", "--address", stack.gateway, "--quick", "--no-progress"]
        out = subprocess.run(
            [*command, "--model", model], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
        ).stdout
        rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith(f"| {model} |")]
        assert [int(row[1]) for row in rows] == [1, 8], out
        for row in rows:
            assert float(row[2].replace(",", "")) > 0 and row[-1].strip() == "0", row
