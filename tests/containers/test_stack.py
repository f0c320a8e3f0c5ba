"""The whole stack from its images, run the way the chart runs it, beside `maas up` and `maas run`.

Each service runs from its image with the command and environment `helm template` renders, its model
repository delivered by its init container into a directory it then mounts read-only. The chart's
`helm test` command sees every service SERVING; every model and pipeline answers stock tritonclient
through the gateway container as it answers through `maas up`; SIGTERM drains every container and
each exits 0. Cold start, container start to SERVING, is measured beside `maas run` of the same service
with the same environment in the same run, and written to docs/containers.md with the image sizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.gateway.routing import parse_routing
from tests.chart.conftest import of_kind, render
from tests.conftest import PYTHON, REPO_ROOT
from tests.containers.podman import (
    REQUIRED,
    RUN_FLAGS,
    START_ORDER,
    ChartService,
    Container,
    chart_services,
    containers,
    deliver,
    free_port_pair,
    podman,
    recorded,
    routing_file,
    run_once,
    start,
    wait_serving,
)
from tests.integration.processes import maas_process
from tests.integration.test_drain import slow_request
from tests.integration.test_up import free_ports
from tests.interop.test_tritonclient import run_script

pytestmark = pytest.mark.containers

COLD_START_RUNS = 3
SLOWER_AT_MOST_SECONDS = 1.0
START_TIMEOUT_SECONDS = 180.0
IN_FLIGHT, SLOW_MS = 4, 1500
REPORT = REPO_ROOT / "docs" / "containers.md"
BEGIN, END = "<!-- measured by make e2e-containers: begin -->", "<!-- measured by make e2e-containers: end -->"
MAAS = Path(PYTHON).parent / "maas"


@dataclass
class Pods:
    """The services as rendered, each with its delivered repository, its loopback port and its routing file."""

    services: dict[str, ChartService]
    ports: dict[str, int]
    models: dict[str, Path]
    delivery_seconds: dict[str, float]
    routing: Path
    containers: dict[str, Container] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def start(self, name: str, port: int) -> str:
        """Start `name`'s container on `port`; return its id."""
        routing = self.routing if name == "gateway" else None
        return start(self.services[name], port, self.models.get(name), routing)

    def host_env(self, name: str, port: int) -> dict[str, str]:
        """The same rendered environment for `maas run` on this machine, paths pointed at the same files
        (no MAAS_ setting of this test session's own: the container has none)."""
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("MAAS_")}
        env = {**inherited, **self.services[name].bound(port)}
        if name in self.models:
            env["MAAS_MODEL_REPOSITORY"] = str(self.models[name])
        if name == "gateway":
            env["MAAS_GATEWAY_ROUTING_FILE"] = str(self.routing / "routing.yaml")
        return env


@pytest.fixture(scope="module")
def pods(images: dict, tmp_path_factory: pytest.TempPathFactory) -> Pods:
    """Every service's init container run into its own directory (the pod's emptyDir), and the
    gateway's routing ConfigMap with its targets on the loopback ports the services will use."""
    services = chart_services()
    assert set(services) == set(START_ORDER)
    root = tmp_path_factory.mktemp("pods")
    models, seconds = {}, {}
    for name, service in services.items():
        if service.init_image:
            models[name] = root / name / "models"
            seconds[name] = deliver(service, models[name])
    assert set(models) == set(START_ORDER) - {"gateway"}
    ports = {name: free_port_pair() for name in START_ORDER}
    routing = parse_routing(routing_file(), "the routing ConfigMap")
    (root / "routing").mkdir()
    loopback = {name: f"127.0.0.1:{ports[name]}" for name in routing.targets}
    (root / "routing" / "routing.yaml").write_text(routing.with_addresses(loopback).to_yaml())
    return Pods(services, ports, models, seconds, root / "routing")


@pytest.fixture(scope="module")
def stack(pods: Pods) -> Iterator[Pods]:
    """Every service's container started in `maas up`'s order, each SERVING before the next starts."""
    with containers() as started:
        for name in START_ORDER:
            container = Container(pods.start(name, pods.ports[name]), name, pods.address(name))
            started.append(container)
            try:
                wait_serving(container.address, START_TIMEOUT_SECONDS, container.running)
            except TimeoutError as exc:
                pytest.fail(f"{name}: {exc}\n{container.logs()}")
            pods.containers[name] = container
        yield pods


def stop_container(container_id: str) -> int:
    """SIGTERM a container, wait for it, remove it; return its exit status."""
    podman("kill", "--signal", "TERM", container_id)
    status = int(podman("wait", container_id, timeout=60).stdout.strip())
    podman("rm", container_id)
    return status


def cold_start_in_container(pods: Pods, name: str) -> float:
    with containers() as started:
        port = free_port_pair()
        began = time.monotonic()
        container = Container(pods.start(name, port), name, f"127.0.0.1:{port}")
        started.append(container)
        serving = wait_serving(container.address, START_TIMEOUT_SECONDS, container.running)
        assert stop_container(container.id) == 0, container.logs()
        started.clear()
    return serving - began


def cold_start_of_maas_run(pods: Pods, name: str, log: Path) -> float:
    port = free_port_pair()
    with log.open("w") as stderr:
        began = time.monotonic()
        process = subprocess.Popen(
            [MAAS, *pods.services[name].command[1:]],
            env=pods.host_env(name, port),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            serving = wait_serving(f"127.0.0.1:{port}", START_TIMEOUT_SECONDS, lambda: process.poll() is None)
        finally:
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=60)
    assert status == 0, log.read_text()
    return serving - began


def test_cold_start_in_a_container_is_within_a_second_of_maas_run(stack: Pods, images: dict, tmp_path: Path):
    """Each service starts beside the stack's containers, so the gateway dials targets that serve, as in
    a deployment (with none it waits its connect timeout out before it reports SERVING)."""
    pods = stack
    load_before = os.getloadavg()
    timings: dict[str, tuple[list[float], list[float]]] = {}
    for name in START_ORDER:
        in_container, as_process = [], []
        for _ in range(COLD_START_RUNS):
            in_container.append(cold_start_in_container(pods, name))
            as_process.append(cold_start_of_maas_run(pods, name, tmp_path / f"{name}.log"))
        timings[name] = (in_container, as_process)
    write_report(images, pods, timings, (load_before, os.getloadavg()))
    for name, (in_container, as_process) in timings.items():
        slower = statistics.median(in_container) - statistics.median(as_process)
        assert slower <= SLOWER_AT_MOST_SECONDS, f"{name}: {slower:.2f} s slower in a container ({timings[name]})"


def test_the_charts_helm_test_command_finds_every_container_serving(stack: Pods):
    (test_pod,) = of_kind(render(), "Pod")
    (box,) = test_pod["spec"]["containers"]
    args = []
    for arg in map(str, box["args"]):
        found = re.fullmatch(r"rel-maas-(\w+)(\.maas(\.svc\.cluster\.local)?)?:\d+", arg)
        args.append(stack.address(found.group(1)) if found else arg)
    done = run_once(*RUN_FLAGS, box["image"], *box["command"], *args, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(f"SERVING {stack.address(name)}" for name in START_ORDER)


def index(address: str) -> list[tuple[str, str]]:
    """(name, version) of every model the server at `address` lists (v2 RepositoryIndex)."""
    with grpc.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return sorted((model.name, model.version) for model in response.models)


def same(a: object, b: object) -> bool:
    """Equal answers: numbers within float tolerance (torch threads may differ), everything else exactly."""
    if isinstance(a, list) and a and all(isinstance(x, (int, float, list)) for x in a):
        try:
            return np.allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-4, atol=1e-6)
        except ValueError:
            return False
    return a == b


@pytest.fixture
async def maas_up() -> AsyncIterator[str]:
    """`maas up` of the same repository on free ports; yields its gateway's address."""
    async with maas_process("up", ready="gateway", env=free_ports(REPO_ROOT / "model_repository")) as up:
        yield up.address


async def test_every_model_and_pipeline_answers_through_the_gateway_container_as_under_maas_up(
    stack: Pods, maas_up: str
):
    gateway = stack.address("gateway")
    models = index(gateway)
    assert models == index(maas_up)
    names = sorted({name for name, _ in models})
    assert {"tokenizer", "fashion_cnn", "review_lstm", "minilm_embed", "review_sentiment_minilm"} <= set(names)
    in_containers = await run_script("tritonclient_gateway.py", gateway, *names)
    under_up = await run_script("tritonclient_gateway.py", maas_up, *names)
    for name in names:
        got, expected = in_containers["models"][name], under_up["models"][name]
        assert got.keys() == expected.keys()
        for key in got:
            assert same(got[key], expected[key]), (name, key, got[key], expected[key])
    for key in ("server", "statistics", "error", "unknown"):
        assert in_containers[key] == under_up[key], key


async def drain(container: Container) -> tuple[list[str], int, float]:
    """Send slow echo calls, SIGTERM the container while they run; return what they answered, its
    exit status and the seconds from SIGTERM to exit."""
    async with grpc.aio.insecure_channel(container.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ServerReady(pb.ServerReadyRequest(), timeout=10)
        calls = [asyncio.ensure_future(stub.ModelInfer(slow_request(SLOW_MS))) for _ in range(IN_FLIGHT)]
        await asyncio.sleep(0.3)
        signalled = time.monotonic()
        await asyncio.to_thread(podman, "kill", "--signal", "TERM", container.id)
        answers = [response.model_name for response in await asyncio.gather(*calls)]
    status = await asyncio.to_thread(podman, "wait", container.id, timeout=60)
    return answers, int(status.stdout.strip()), time.monotonic() - signalled


async def test_sigterm_drains_every_container_and_each_exits_0(stack: Pods):
    names = list(reversed(START_ORDER))
    results = await asyncio.gather(*(drain(stack.containers[name]) for name in names))
    for name, (answers, status, seconds) in zip(names, results, strict=True):
        logs = stack.containers[name].logs()
        assert answers == ["echo"] * IN_FLIGHT, (name, answers)
        assert status == 0, (name, logs)
        assert seconds < 10, (name, seconds)
        draining = [json.loads(line)["msg"] for line in logs.splitlines() if " draining: " in line]
        assert draining == [f"{name} draining: {IN_FLIGHT} calls in flight"], (name, logs)


def write_report(
    images: dict, pods: Pods, timings: dict[str, tuple[list[float], list[float]]], load: tuple[tuple, tuple]
) -> None:
    """Replace the measured section of docs/containers.md with this run's numbers."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    lines = [
        BEGIN,
        f"Measured by `make e2e-containers` on {head.stdout.strip()}, {time.strftime('%Y-%m-%d')}, on this machine "
        f"(2 cores, shared: load average {load[0][0]:.1f} before the cold starts, {load[1][0]:.1f} after).",
        "",
        "| image | uncompressed size | budget | build time |",
        "|---|---:|---:|---:|",
    ]
    budgets = {"gateway": "350 MB", "tokenizer": "350 MB", "models": "1.8 GB", "models-ray": "2.5 GB"}
    record = recorded()
    built = {"base": record["base"], **images} if "base" in record else images
    for name, entry in built.items():
        size = int(podman("image", "inspect", "--format", "{{.Size}}", entry["image"]).stdout)
        label = f"`{entry['image']}` (debootstrap)" if name == "base" else f"`{entry['image']}`"
        lines.append(f"| {label} | {size / 1e6:,.0f} MB | {budgets.get(name, '')} | {entry['build_seconds']:.0f} s |")
    downloads = record.get("downloads", {}).get("seconds", 0)
    seconds = downloads + sum(entry["build_seconds"] for name, entry in built.items() if name in ("base", *REQUIRED))
    lines += [
        "",
        f"Downloading the wheelhouse took {downloads:.0f} s; the base, the downloads and the builds of "
        f"`make images` {seconds / 60:.1f} min in all. Build times are those recorded in "
        "build/images.json: a cached layer costs nothing, so an image built after another that shares its layers "
        "shows only its own steps, and a rebuild after a code change only the last ones.",
        "",
        f"Cold start: from starting the service (`podman run`, or `maas run` on this machine with the same "
        f"environment and the same delivered repository) to grpc.health.v1 SERVING; median of {COLD_START_RUNS}, "
        "runs alternating, each beside the stack's running containers (the gateway's targets serve, as in a "
        "deployment). The init container's copy (delivery) runs before and is not counted.",
        "",
        "| service | image | container | `maas run` | container minus `maas run` | delivery (init container) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in START_ORDER:
        in_container, as_process = (statistics.median(runs) for runs in timings[name])
        image = pods.services[name].image.split("/")[-1]
        delivery = f"{pods.delivery_seconds[name]:.1f} s" if name in pods.delivery_seconds else "—"
        lines.append(
            f"| {name} | `{image}` | {in_container:.2f} s | {as_process:.2f} s | "
            f"{in_container - as_process:+.2f} s | {delivery} |"
        )
    lines.append(END)
    text = REPORT.read_text()
    begin, end = text.index(BEGIN), text.index(END) + len(END)
    REPORT.write_text(text[:begin] + "\n".join(lines) + text[end:])
