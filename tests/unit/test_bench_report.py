"""The benchmark report: a section measured again alone replaces only itself; rows print as JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path

import pytest

from services.bench import startup
from services.bench.loadgen import LoadResult
from services.bench.report import Row, Section, as_text, git_revision, machine, write_report
from tests.conftest import REPO_ROOT

OLD_REPORT = """# Benchmarks

## First

_Measured by `maas bench` at git abc1234, 2026-12-01 02:33 UTC, on a machine._

How to read it.

| what | concurrency | req/s | p50 ms | p95 ms | p99 ms | failed |
|---|---:|---:|---:|---:|---:|---:|
| a | 1 | 10 | 1.00 | 1.00 | 1.00 | 0 |

## Second

Old second.
"""


def section(title: str, throughput: float) -> Section:
    result = LoadResult(concurrency=4, completed=int(throughput), failed=0, seconds=1.0, p50_ms=2, p95_ms=3, p99_ms=4)
    return Section(title, f"{title} note.", [Row("echo", result)], [f"{title} finding."])


def test_a_section_measured_alone_replaces_only_itself(tmp_path: Path):
    output = tmp_path / "docs" / "benchmarks.md"
    output.parent.mkdir()
    output.write_text(OLD_REPORT)
    write_report(output, [section("Second", 50), section("Third", 70)], "maas bench --section x", REPO_ROOT)
    report = output.read_text()
    titles = [line[3:] for line in report.splitlines() if line.startswith("## ")]
    assert titles == ["First", "Second", "Third"]
    first = report[report.index("## First") : report.index("## Second")]
    assert "_Measured by `maas bench` at git abc1234, 2026-12-01 02:33 UTC, on a machine._" in first
    assert "| a | 1 | 10 |" in first
    second = report[report.index("## Second") : report.index("## Third")]
    assert "Old second" not in second and "| echo | 4 | 50 |" in second
    assert f"`maas bench --section x` at git {git_revision(REPO_ROOT)}" in second
    assert f"on {machine()}, python {platform.python_version()}._" in second
    assert "![Second: throughput and latency by concurrency](benchmarks/second.png)" in second
    assert (output.parent / "benchmarks" / "second.png").read_bytes()[:4] == b"\x89PNG"
    write_report(output, [section("First", 90)], "maas bench --section y", REPO_ROOT)
    again = output.read_text()
    assert again.count("## First") == 1 and "| echo | 4 | 90 |" in again and "| echo | 4 | 50 |" in again


@pytest.mark.parametrize("hostings", [("grpc",), ("grpc", "ray")])
def test_the_cold_start_chart_draws_each_hosting_and_front(tmp_path: Path, hostings: tuple[str, ...]):
    medians = {(service, hosting): 1.0 + i for i, service in enumerate(startup.SERVICES) for hosting in hostings}
    rows = [
        Row(startup._timing_label(front, ask), LoadResult(16, 1000 + i, 0, 1.0, 2, 3, 4))
        for front in startup.TIMING_FRONTS
        for i, ask in enumerate(startup.TIMING_ASKS)
        for _ in range(startup.TIMING_ROUNDS)
    ]
    chart = tmp_path / "chart.png"
    startup._plot(chart, medians, rows)
    assert chart.read_bytes()[:4] == b"\x89PNG" and chart.stat().st_size > 10_000


def test_rows_print_as_json_and_csv():
    sections = [section("One", 5), section("Two", 6)]
    parsed = json.loads(as_text(sections, "json"))
    assert [s["title"] for s in parsed] == ["One", "Two"] and parsed[1]["rows"][0]["req_per_s"] == 6.0
    rows = list(csv.DictReader(io.StringIO(as_text(sections, "csv"))))
    assert [(r["section"], r["what"], r["concurrency"], r["p99_ms"]) for r in rows] == [
        ("One", "echo", "4", "4"),
        ("Two", "echo", "4", "4"),
    ]
    assert "| echo | 4 | 5 |" in as_text(sections, "table")
