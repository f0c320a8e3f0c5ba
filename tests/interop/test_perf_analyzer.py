"""Stock perf_analyzer (the binary from tritonclient 2.41.0's wheel) against every maas model, direct
and through the gateway: it reads ModelMetadata, ModelConfig and ModelStatistics as Triton serves
them, sends the committed input data, and must end with throughput and no error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.bench import perf_analyzer
from services.common.server import GrpcServer
from services.gateway.hosting import build_server
from services.vision.spec import MODEL_NAME as VISION
from tests.conftest import started
from tests.contract.test_gateway import gateway_settings, routing

WINDOW_MS = 300


@pytest.fixture
async def gateway(tokenizer_server, vision_server, text_server, transformer_server) -> AsyncIterator[GrpcServer]:
    targets = routing(
        tokenizer=f"127.0.0.1:{tokenizer_server.port}",
        vision=f"127.0.0.1:{vision_server.port}",
        text=f"127.0.0.1:{text_server.port}",
        transformer=f"127.0.0.1:{transformer_server.port}",
    )
    async with started(build_server(gateway_settings(), targets)) as server:
        yield server


async def test_perf_analyzer_reports_fashion_cnn_throughput_with_no_error(vision_server: GrpcServer):
    result = await perf_analyzer.run(VISION, f"127.0.0.1:{vision_server.port}", concurrency=4, window_ms=WINDOW_MS)
    assert result.concurrency == 4 and result.throughput > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert "Successful request count" in result.output, "server-side statistics read from ModelStatistics"


async def test_perf_analyzer_runs_every_model_direct_and_through_the_gateway(
    gateway: GrpcServer, tokenizer_server, vision_server, text_server, transformer_server
):
    direct = {
        "tokenizer": tokenizer_server,
        VISION: vision_server,
        "review_lstm": text_server,
        "minilm_embed": transformer_server,
        "minilm_sentiment": transformer_server,
        "echo": vision_server,
    }
    assert set(direct) == {*perf_analyzer.SERVICE_MODELS, "echo"}
    runs = [(model, server.port) for model, server in direct.items()]
    runs += [(model, gateway.port) for model in (*direct, *perf_analyzer.GATEWAY_MODELS)]
    for model, port in runs:
        result = await perf_analyzer.run(model, f"127.0.0.1:{port}", concurrency=2, window_ms=WINDOW_MS)
        assert result.throughput > 0, (model, port)


def test_committed_input_data_is_what_the_generator_writes(model_repository: Path, tmp_path: Path):
    written = perf_analyzer.write_input_data(model_repository, tmp_path)
    assert {p.name for p in written} == {p.name for p in perf_analyzer.INPUT_DATA.glob("*.json")}
    for path in written:
        assert json.loads(path.read_text()) == json.loads((perf_analyzer.INPUT_DATA / path.name).read_text()), path.name
