"""`maas bench --quick` end to end, so the harness and its report cannot rot."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, REPO_ROOT


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
    subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=240, capture_output=True)
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
    assert (
        "no batching for the LSTM" in report
        and "review_lstm int8 serves" in report
        and "minilm_embed int8 serves" in report
    )


def test_a_section_run_alone_replaces_its_part_of_the_report(model_repository: Path, tmp_path: Path):
    output = tmp_path / "benchmarks.md"
    output.write_text((REPO_ROOT / "docs" / "benchmarks.md").read_text())
    before = output.read_text()
    command = [PYTHON, "-m", "services.cli.main", "bench", "--quick", "--section", "inline"]
    command += ["--repository", str(model_repository), "--output", str(output)]
    subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=120, capture_output=True)
    report = output.read_text()
    assert report.count("## Inline threshold (tokenizer, concurrency 1)") == 1
    assert "Run alone: `maas bench --quick --section inline" in report

    def others(text: str) -> list[str]:
        return [part.strip() for part in text.split("\n## ") if not part.startswith("Inline threshold")]

    assert others(report) == others(before)
