"""A real Prometheus server (Debian package `prometheus`; `.ci/run` installs it) scrapes a running
service on loopback (a process of its own, `tests/integration/linear_server.py`, so its counters start
at zero), and its query API answers what an operator asks: requests by model and version (a canary
beside its baseline), per-version batcher compute time and queue depth; and it runs every query the
chart ships (the Grafana dashboard's panels, the alerts, KEDA's triggers) against the real metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from maas.inference import grpc_service_pb2_grpc
from services.cli.processes import serving
from tests.chart.conftest import CHART, NAMESPACE, RELEASE, of_kind, render
from tests.conftest import REPO_ROOT, free_port
from tests.contract.linear_model import make_version
from tests.contract.test_repository import linear_request

pytestmark = pytest.mark.slow

SCRAPE_SECONDS = 1
JOB = f"{RELEASE}-maas-vision"
WAIT_SECONDS = 60
WARM_UP_ROWS = 1
"""Rows each version executed at load, before SERVING: its warm-up batch (an execution, not a request)."""


LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    reply = json.loads(LOOPBACK.open(url, timeout=5).read())
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def _by_version(results: list[dict]) -> dict[str, float]:
    return {r["metric"].get("version", ""): float(r["value"][1]) for r in results}


async def _ready(port: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            await asyncio.to_thread(LOOPBACK.open, f"http://127.0.0.1:{port}/-/ready", timeout=2)
            return
        except OSError:
            await asyncio.sleep(0.2)
    pytest.fail(f"prometheus did not get ready within {WAIT_SECONDS} s")


async def _until(port: int, expression: str, expected: dict[str, float] | None) -> dict[str, float]:
    """Query until the answer by version equals `expected` (None: has two versions; scrapes come every second)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        seen = _by_version(await asyncio.to_thread(_query, port, expression))
        if seen == expected or (expected is None and len(seen) == 2):
            return seen
        await asyncio.sleep(0.5)
    return seen


def _the_charts_queries_run(port: int) -> None:
    """Every PromQL expression the chart renders runs on the real metrics, as the chart's own objects
    select them (namespace and job labels as the ServiceMonitor sets them)."""
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    variables = {"$namespace": NAMESPACE, "$job": JOB, "$__rate_interval": "1m"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expression = target["expr"]
            for name, value in variables.items():
                expression = expression.replace(name, value)
            results = _query(port, expression)
            if panel["title"].startswith(("Calls per second", "Batcher queue depth")):
                assert {r["metric"].get("version") for r in results} >= {"1", "2"}, panel["title"]
    docs = render(None, "vision.autoscaling.keda.enabled=true")
    (rule,) = of_kind(docs, "PrometheusRule")
    for alert in rule["spec"]["groups"][0]["rules"]:
        _query(port, alert["expr"])
    (scaled,) = of_kind(docs, "ScaledObject")
    (value,) = _query(port, scaled["spec"]["triggers"][0]["metadata"]["query"])
    assert float(value["value"][1]) == 0, "the vision queue-depth trigger reads the service's (empty) queues"


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: apt-get install prometheus (.ci/run does)")
    return binary


async def test_prometheus_scrapes_requests_by_model_and_version(tmp_path: Path, prometheus_binary: str):
    repository = tmp_path / "repository"
    for version, scale in ((1, 1.0), (2, 2.0)):
        make_version(repository, version, scale)
    (repository / "linear" / "model.json").write_text('{"version_policy": "all"}')
    metrics_port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.linear_server",
        str(repository),
        str(metrics_port),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    async with serving(server, "linear") as address, grpc.aio.insecure_channel(address) as channel:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE_SECONDS}s, evaluation_interval: {SCRAPE_SECONDS}s}}\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}'],"
            f" labels: {{namespace: {NAMESPACE}}}}}]\n"
        )
        port = free_port()
        prometheus = await asyncio.create_subprocess_exec(
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await _ready(port)
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for version, calls in (("1", 9), ("2", 3)):
                await asyncio.gather(*(stub.ModelInfer(linear_request(rows=2, version=version)) for _ in range(calls)))
            served = 'maas_grpc_requests_total{method="ModelInfer",code="OK"}'
            by_version = f"sum by (model, version) ({served})"
            assert await _until(port, by_version, {"1": 9, "2": 3}) == {"1": 9, "2": 3}
            (row,) = _query(port, f"sum by (model) ({served})")
            assert row["metric"] == {"model": "linear"} and float(row["value"][1]) == 12
            share = _query(port, f"{by_version} / ignoring(version) group_left sum by (model) ({served})")
            assert _by_version(share) == {"1": 0.75, "2": 0.25}
            rows = _by_version(_query(port, "sum by (version) (maas_batch_size_sum)"))
            assert rows == {"1": 18 + WARM_UP_ROWS, "2": 6 + WARM_UP_ROWS}
            computed = _by_version(_query(port, "sum by (version) (maas_batch_compute_seconds_count)"))
            assert set(computed) == {"1", "2"} and all(count >= 1 for count in computed.values())
            assert _by_version(_query(port, "maas_batch_queue_depth")) == {"1": 0, "2": 0}
            assert _by_version(_query(port, "maas_batch_queue_limit")) == {"1": 1024, "2": 1024}
            rates = f"sum by (version) (rate({served}[1m]))"
            assert set(await _until(port, rates, None)) == {"1", "2"}, "rates need two scrapes"
            _the_charts_queries_run(port)
        finally:
            prometheus.terminate()
            try:
                await asyncio.wait_for(prometheus.wait(), 10)
            except TimeoutError:
                prometheus.kill()
                await prometheus.wait()
