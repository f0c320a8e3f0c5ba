"""`maas bench --quick` end to end, so the harness and its report cannot rot."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO_ROOT


@pytest.mark.timeout(600)
def test_quick_bench_writes_a_report_with_every_row(model_repository: Path, tmp_path: Path):
    output = tmp_path / "benchmarks.md"
    command = [
        PYTHON,
        "-m",
        "services.cli.main",
        "bench",
        "--quick",
        "--repository",
        str(model_repository),
        "--output",
        str(output),
    ]
    subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=570, capture_output=True)
    report = output.read_text()
    assert "- command: `maas bench --quick" in report and re.search(r"- git: [0-9a-f]{7}", report)
    rows = re.findall(r"^\| ([^|]+) \| (\d+) \| ([\d,]+) \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| (\d+) \|$", report, re.M)
    measured = {(label, int(c)) for label, c, *_ in rows}
    for concurrency in (1, 8):
        for label in ("echo (v2)", "tokenizer (v2 ModelInfer)", "tokenizer (typed Tokenize)"):
            assert (label, concurrency) in measured
    assert ("in-process `tokenizers` encode_batch", 1) in measured
    for label, concurrency in (
        ("echo (v2)", 1),
        ("fashion_cnn, batching on", 1),
        ("fashion_cnn, batching on", 8),
        ("fashion_cnn, batching off", 8),
        ("in-process forward, batch 1", 1),
        ("in-process forward, batch 32", 1),
        ("reviews, batching on, length-aware", 8),
        ("reviews, batching on, fixed padding (256)", 8),
        ("reviews, batching off", 8),
        ("short texts, batching on, length-aware, 1 thread", 8),
        ("short texts, batching off, 1 thread", 8),
        ("short texts, batching on, length-aware, 2 threads", 8),
        ("short texts, batching off, 2 threads", 8),
        ("in-process, reviews, batch 32", 1),
        ("in-process, reviews, batch 1", 1),
        ("in-process, short texts, batch 32", 1),
        ("in-process, short texts, batch 1", 1),
        ("review_lstm fp32, batching off", 8),
        ("in-process review_lstm fp32, batch 32", 1),
        ("in-process review_lstm int8, batch 32", 1),
        ("echo at the gateway (one hop)", 1),
        ("echo at the transformer (one hop)", 1),
        ("tokenizer, through the gateway", 1),
        ("minilm_embed, direct", 1),
        ("minilm_embed, through the gateway", 1),
        ("minilm_embed, through a bare relay", 1),
        ("minilm_embed, direct", 16),
        ("minilm_embed, through the gateway", 16),
        ("grpc hosting (own process)", 16),
        ("ray, default path (maas front, DeploymentHandle)", 16),
        ("ray, Serve's native gRPC proxy", 16),
        ("fashion_cnn, not asked", 16),
        ("fashion_cnn, maas-timing: 1", 16),
    ):
        assert (label, concurrency) in measured
    for model in ("review_lstm", "minilm_embed"):
        for precision in ("fp32", "int8"):
            for concurrency in (1, 8):
                assert (f"{model} {precision}, batching on", concurrency) in measured
    for label, _, throughput, p50, failed in rows:
        assert int(throughput.replace(",", "")) > 0 and float(p50) > 0 and failed == "0", label
    assert "Tokenizing adds" in report and "fashion_cnn adds" in report and "batching on serves" in report
    assert (
        "Length-aware padding serves" in report
        and "on short texts, batching serves" in report
        and "With the same threads" in report
    )
    assert re.search(r"The gateway adds -?[\d.]+ ms p50 to `minilm_embed`", report)
    assert re.search(r"A bare relay adds -?[\d.]+ ms to `minilm_embed`", report)
    assert re.search(r"of its direct throughput", report)
    assert re.search(r"the ray default path serves [\d.]+x the requests of Serve's native proxy", report)
    assert re.search(r"The gateway spends [\d,]+ µs of CPU per request", report)
    assert (
        "no batching for the LSTM" in report
        and "review_lstm int8 serves" in report
        and "minilm_embed int8 serves" in report
    )
    for service in ("tokenizer", "vision", "text", "transformer"):
        assert re.search(rf"^\| {service} \| grpc \| [\d.]+ \| [\d.]+ \|$", report, re.M), service
    assert re.search(r"Cold start, grpc hosting \(median; target\): tokenizer [\d.]+ s", report)
    assert re.search(r"callers asking for `maas-timing` get [\d.]+% of the throughput", report)
    for model in ("fashion_cnn", "minilm_embed"):
        for load, mode in (("50%", "latency target"), ("80%", "latency target"), ("120%", "latency target")):
            assert re.search(rf"^\| {model} \| [\d.]+ \| {load} \| {mode} \|", report, re.M), (model, load)
        assert re.search(rf"^\| {model} \| [\d.]+ \| 120% \| best static \(static [\d.]+ ms\) \|", report, re.M)
        assert re.search(rf"{model} step: worst served p99 per 0.5 s window", report)
    assert (output.parent / "latency-step.png").stat().st_size > 1000
