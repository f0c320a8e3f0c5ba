"""`maas bench --quick` end to end, so the harness and its report cannot rot."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from services.bench.run import SECTIONS
from tests.conftest import PYTHON, REPO_ROOT
from tests.integration.processes import maas_output, maas_process, run_failing


@pytest.mark.timeout(900)
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
        "--no-progress",
        *(f"--section={name}" for name in SECTIONS if name != "tradeoffs"),  # its own test: test_bench_tradeoffs
    ]
    subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=840, capture_output=True)
    report = output.read_text()
    assert re.search(r"^_Measured by `maas bench --quick .*` at git [0-9a-f]{7}", report, re.M)
    charts = re.findall(r"^!\[[^]]+\]\((benchmarks/[a-z0-9-]+\.png)\)$", report, re.M)
    assert len(charts) == report.count("\n## ") and all((tmp_path / chart).stat().st_size > 10_000 for chart in charts)
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
        ("tokenizer, gateway with HTTP on", 1),
        ("tokenizer, gateway with HTTP off", 1),
        ("minilm_embed, gateway with HTTP on", 16),
        ("minilm_embed, gateway with HTTP off", 16),
        ("grpc hosting (own process)", 16),
        ("ray, default path (maas front, DeploymentHandle)", 16),
        ("ray, Serve's native gRPC proxy", 16),
        ("16 callers", 16),
        ("256 callers, refused callers back off (50 ms doubling to 1 s): answered", 256),
        ("256 callers, refused callers back off (50 ms doubling to 1 s): refused", 256),
        ("256 callers, refused callers wait 100 ms: answered", 256),
        ("256 callers, refused callers wait 100 ms: refused", 256),
        ("256 callers, refused callers retry at once: answered", 256),
        ("256 callers, refused callers retry at once: refused", 256),
        ("inline up to 64 KiB (default)", 1),
        ("everything inline (before)", 1),
        ("everything on a worker thread", 1),
        ("fashion_cnn, python front, not asked", 16),
        ("fashion_cnn, python front, maas-timing: 1", 16),
        ("fashion_cnn, native front, not asked", 16),
        ("fashion_cnn, native front, maas-timing: 1", 16),
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
    assert re.search(r"refusals take [\d.]+ ms at p99 .* goodput is \d+% of the 16-caller rate", report)
    assert re.search(r"The threshold costs [-+][\d.]+ ms p50 against everything inline", report)
    assert re.search(r"is -?[\d.]+ ms with HTTP on and -?[\d.]+ ms with HTTP off on `minilm_embed`", report)
    assert (
        "no batching for the LSTM" in report
        and "review_lstm int8 serves" in report
        and "minilm_embed int8 serves" in report
    )
    for service in ("tokenizer", "vision", "text", "transformer"):
        assert re.search(rf"^\| {service} \| grpc \| [\d.]+ \| [\d.]+ \|$", report, re.M), service
    assert re.search(r"Cold start, grpc hosting \(median; target\): tokenizer [\d.]+ s", report)
    for front in ("python", "native"):
        assert re.search(rf"on the {front} front, callers asking for `maas-timing` get [\d.]+%", report), front
    best = r"best static \((static [\d.]+ ms|\w+ front, no target)\)"
    for model in ("fashion_cnn", "minilm_embed"):
        for load, mode in (("50%", "latency target"), ("80%", "latency target"), ("120%", "latency target")):
            assert re.search(rf"^\| {model} \| [\d.]+ \| {load} \| {mode} \|", report, re.M), (model, load)
        assert re.search(rf"^\| {model} \| [\d.]+ \| 120% \| {best} \|", report, re.M)
        assert re.search(
            rf"{model} step, the calls sent outside the 2 s after each change: served p99 [\d.]+ ms \(T [\d.]+ ms\), "
            r"shed [\d.]+%; the worst p99 of a 0.5 s window among them [\d.]+ ms",
            report,
        )
    assert "benchmarks/latency-target-open-loop.png" in charts
    assert "Cold start and maas-timing: cold start per service and hosting" in report


async def test_bench_measures_a_running_gateway(model_repository: Path, tmp_path: Path):
    env = {"MAAS_MODEL_REPOSITORY": str(model_repository), "MAAS_TOKENIZER_METRICS_PORT": "0"}
    async with maas_process("run", "tokenizer", "--port", "0", ready="tokenizer", env=env) as tokenizer:
        routing = tmp_path / "routing.yaml"
        routing.write_text(
            f"targets: {{t: {{endpoints: ['{tokenizer.address}']}}}}\nmodels: {{tokenizer: {{target: t}}}}\n"
        )
        gateway_env = {"MAAS_GATEWAY_ROUTING_FILE": str(routing), "MAAS_GATEWAY_METRICS_PORT": "0"}
        async with maas_process("run", "gateway", "--port", "0", ready="gateway", env=gateway_env) as gateway:
            bench = ["bench", "--address", gateway.address, "--quick", "--concurrency", "1,3", "--no-progress"]
            rows = json.loads(await maas_output(*bench, "--model", "tokenizer", "--json", "--plots", str(tmp_path)))
            (section,) = rows
            assert section["title"] == f"tokenizer at {gateway.address}"
            assert [(r["concurrency"], r["failed"]) for r in section["rows"]] == [(1, 0), (3, 0)]
            assert all(
                r["completed"] > 0 and r["req_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in section["rows"]
            )
            assert (tmp_path / f"tokenizer-at-{gateway.address.replace(':', '-').replace('.', '-')}.png").exists()
            request = tmp_path / "request.json"
            request.write_text(
                json.dumps({"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
            )
            table = await maas_output(*bench, "--input-file", str(request), "--csv")
            lines = table.splitlines()
            assert lines[0].split(",")[:3] == ["section", "what", "concurrency"] and len(lines) == 3
            assert all(line.split(",")[1] == "echo" for line in lines[1:])
            _, stderr = await run_failing(*bench, "--model", "nope", env={})
            assert b"NOT_FOUND" in stderr and b"nope" in stderr
