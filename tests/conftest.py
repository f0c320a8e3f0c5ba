"""Fixtures shared by every test depth."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from maas.inference import grpc_service_pb2_grpc
from services.common.echo import echo_model
from services.common.server import GrpcServer
from services.common.settings import EchoSettings
from services.common.versions import ModelRegistry

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TEST_MESSAGE_LIMIT = 1 << 20


def pytest_configure(config: pytest.Config) -> None:
    """Every gateway a test starts, in this process or as a child, serves HTTP on a free port unless the
    test names one (the default, 8080, may be taken on a shared machine), and waits at most 2 s at start for
    targets that are down on purpose."""
    os.environ.setdefault("MAAS_GATEWAY_HTTP_PORT", "0")
    os.environ.setdefault("MAAS_GATEWAY_CONNECT_TIMEOUT_SECONDS", "2")


@asynccontextmanager
async def started(server: GrpcServer) -> AsyncIterator[GrpcServer]:
    """Start `server` for the duration of the block, then drain and stop it."""
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def terminate(process: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM `process` (it drains), then SIGKILL it if it is still running after `grace` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def echo_server() -> AsyncIterator[GrpcServer]:
    """The runtime with only `echo`, on a free port, with the production interceptor."""
    settings = EchoSettings(port=0, metrics_port=0, max_message_bytes=TEST_MESSAGE_LIMIT, drain_grace_seconds=2)
    async with started(GrpcServer("echo-server", settings, ModelRegistry([echo_model()]))) as server:
        yield server


@pytest.fixture
async def channel(echo_server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to `echo_server` that can send more than the server accepts."""
    options = [("grpc.max_send_message_length", 4 * TEST_MESSAGE_LIMIT)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo_server.port}", options=options) as chan:
        yield chan


@pytest.fixture
def v2(channel: grpc.aio.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    """A v2 stub on `channel`."""
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


TINY_VISION_IMAGES = 4000
TINY_TEXT_REVIEWS = 800


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding what the tests serve: the exported tokenizer and MiniLM, a vision
    CNN trained for two epochs on 4,000 images, a review LSTM trained for two epochs on 800 reviews
    with its int8 version beside it, and a sentiment head trained on 200 reviews (seconds; the
    default recipes are tested separately)."""
    from services.common.torch_weights import DYNAMIC_INT8
    from services.text import train as text
    from services.text.recipe import Recipe as TextRecipe
    from services.tokenizer.export import export_tokenizer
    from services.transformer import train as transformer
    from services.transformer.export import export_minilm
    from services.vision.recipe import Recipe
    from services.vision.train import train

    repository = tmp_path_factory.mktemp("model_repository")
    export_tokenizer(repository)
    train(Recipe(epochs=2, train_limit=TINY_VISION_IMAGES), repository, progress=False)
    text.train(TextRecipe(epochs=2, train_limit=TINY_TEXT_REVIEWS, test_limit=200), repository, progress=False)
    text.quantize_version(repository, DYNAMIC_INT8, test_limit=200)
    export_minilm(repository)
    transformer.train(transformer.Recipe(train_limit=200, test_limit=50), repository, progress=False)
    return repository


def link_or_copy(source: str, target: str) -> None:
    """Hard-link weights; copy `model.json`, which exporting rewrites in place."""
    from services.common.repository import MODEL_FILE

    if os.path.basename(source) == MODEL_FILE:
        shutil.copy2(source, target)
    else:
        os.link(source, target)


@pytest.fixture(scope="session")
def onnx_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`model_repository` with each exportable model exported to ONNX (parity measured on a few test
    inputs), every version served and the ONNX one the default.

    Returns:
        `repository` (its root), and `versions`: model -> (torch source version, ONNX version).
    """
    from services.common.repository import MODEL_FILE, ModelFile, read_version
    from services.text.train import export_onnx as export_text
    from services.transformer.train import export_embed_onnx, export_sentiment_onnx
    from services.vision.train import export_onnx as export_vision

    repository = tmp_path_factory.mktemp("onnx") / "repository"
    shutil.copytree(model_repository, repository, copy_function=link_or_copy)
    published = {
        "fashion_cnn": export_vision(repository, test_limit=500),
        "review_lstm": export_text(repository, test_limit=64),
        "minilm_embed": export_embed_onnx(repository, test_limit=16),
        "minilm_sentiment": export_sentiment_onnx(repository, test_limit=16),
    }
    versions = {}
    for model, directory in published.items():
        source = read_version(directory, model).data["exported_from"].rpartition("/")[2]
        versions[model] = (source, directory.name)
        model_file = ModelFile(version_policy="all", default_version=directory.name)
        (repository / model / MODEL_FILE).write_text(model_file.model_dump_json(), encoding="utf-8")
    return {"repository": repository, "versions": versions}


@dataclasses.dataclass(frozen=True)
class Served:
    """What the model service fixtures serve: the repository, and the version of each model that answers
    requests naming none."""

    platform: str
    repository: Path
    defaults: dict[str, str]
    platform_name: str

    def default(self, model: str) -> str:
        """The version of `model` that answers requests naming none."""
        return self.defaults[model]

    @property
    def ray_apps(self) -> str:
        """The session fixture holding the Serve applications over this repository."""
        return "onnx_ray_apps" if self.platform == "onnx" else "ray_apps"


PLATFORMS = ["torch", "onnx"]


@pytest.fixture
def platform() -> str:
    """The platform of the default versions the model service fixtures serve: `torch`, unless a module
    overrides this fixture with one parametrized over PLATFORMS (the vision, text and transformer contract
    suites), or a test names one (`@pytest.mark.parametrize("platform", ["torch"])`)."""
    return "torch"


@pytest.fixture
def served(platform: str, model_repository: Path, request: pytest.FixtureRequest) -> Served:
    """The repository the model service fixtures serve: `model_repository` (torch defaults, every default
    version 1) or `onnx_repository` (every torch version, and the ONNX one the default)."""
    if platform == "torch":
        defaults = dict.fromkeys(("fashion_cnn", "review_lstm", "minilm_embed", "minilm_sentiment"), "1")
        return Served("torch", model_repository, defaults, "pytorch_safetensors")
    onnx = request.getfixturevalue("onnx_repository")
    defaults = {model: exported for model, (_, exported) in onnx["versions"].items()}
    return Served("onnx", onnx["repository"], defaults, "onnxruntime")


HOSTINGS = ["grpc", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])]


def tokenizer_settings(repository: Path):
    """The tokenizer's test settings: a free port, low text limits so they are cheap to exceed."""
    from services.tokenizer.spec import TokenizerSettings

    return TokenizerSettings(port=0, metrics_port=0, model_repository=repository, max_texts=64, max_text_bytes=4096)


def vision_settings(repository: Path):
    """The vision service's test settings: a free port, the tiny CNN, a low image limit."""
    from services.vision.spec import VisionSettings

    return VisionSettings(port=0, metrics_port=0, model_repository=repository, max_images=256)


def transformer_settings(repository: Path):
    """The transformer's test settings: a free port, a low sequence limit."""
    from services.transformer.spec import TransformerSettings

    return TransformerSettings(port=0, metrics_port=0, model_repository=repository, max_texts=32)


def text_settings(repository: Path):
    """The text service's test settings: a free port, a low sequence limit."""
    from services.text.spec import TextSettings

    return TextSettings(port=0, metrics_port=0, model_repository=repository, max_texts=32)


SETTINGS = {
    "tokenizer": tokenizer_settings,
    "vision": vision_settings,
    "text": text_settings,
    "transformer": transformer_settings,
}


def ray_test_settings(**overrides):
    """Ray settings for tests: free ports for Serve's proxies, small logical CPU counts."""
    from services.common.settings import RaySettings

    return RaySettings(grpc_port=free_port(), http_port=free_port(), **overrides)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray with Serve for the whole session (start-up costs 10-30 s), stopped by handle. It offers
    6 logical CPUs: room for the session's applications (`ray_apps`, `onnx_ray_apps`) and the ones a
    module adds, at 0.5 each."""
    from services.ray import cluster

    settings = ray_test_settings(min_replicas=1, max_replicas=1, num_cpus=6)
    cluster.start(settings)
    try:
        yield settings
    finally:
        cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def ray_before_grpc(request: pytest.FixtureRequest) -> None:
    """Start the session's Ray (`ray_cluster`) before the first test when any test is marked `ray`. Ray's
    start forks its processes from this one and runs Python in each child before exec; once gRPC's threads
    run here (any test's server or channel), a child can deadlock there, and Ray's start times out waiting
    for its raylet (seen once in CI, where every test on the ray hosting then failed)."""
    if any(item.get_closest_marker("ray") for item in request.session.items):
        request.getfixturevalue("ray_cluster")


@pytest.fixture(scope="session")
def ray_apps(ray_cluster, model_repository: Path) -> dict:
    """The tokenizer, vision, text and transformer Serve applications over `model_repository`, with the grpc
    fixtures' settings: service -> the handle of its deployment."""
    from services.catalog import SERVICES
    from services.ray import cluster

    return cluster.deploy([(SERVICES[name], make(model_repository)) for name, make in SETTINGS.items()], ray_cluster)


MODEL_SERVICES = ("vision", "text", "transformer")


@pytest.fixture(scope="session")
def onnx_ray_apps(ray_cluster, onnx_repository: dict) -> dict:
    """The vision, text and transformer Serve applications over `onnx_repository` (applications named
    `<service>-onnx`, beside `ray_apps`): service -> the handle of its deployment."""
    from services.catalog import SERVICES
    from services.ray import cluster

    apps = [
        (dataclasses.replace(SERVICES[name], name=f"{name}-onnx"), SETTINGS[name](onnx_repository["repository"]))
        for name in MODEL_SERVICES
    ]
    handles = cluster.deploy(apps, ray_cluster)
    return {name: handles[f"{name}-onnx"] for name in MODEL_SERVICES}


@pytest.fixture(params=HOSTINGS)
def hosting(request: pytest.FixtureRequest) -> str:
    """The hosting a service fixture runs under: `grpc` (its own server) or `ray` (Serve replicas behind
    the maas front)."""
    return request.param


@asynccontextmanager
async def hosted(
    name: str, hosting: str, repository: Path, request: pytest.FixtureRequest, ray_apps: str = "ray_apps"
) -> AsyncIterator:
    """Run service `name` under `hosting` over `repository` for the block (under ray, the application in
    session fixture `ray_apps`, deployed over the same repository); yields its server (with `.port`)."""
    from services.catalog import SERVICES
    from services.common.server import build_server

    settings = SETTINGS[name](repository)
    if hosting == "grpc":
        server = build_server(SERVICES[name], settings)
    else:
        from services.ray.front import RayFront

        handles = request.getfixturevalue(ray_apps)
        server = RayFront(SERVICES[name], settings, handles[name], request.getfixturevalue("ray_cluster"))
    async with started(server) as running:
        yield running


@pytest.fixture
async def tokenizer_server(hosting: str, model_repository: Path, request) -> AsyncIterator[GrpcServer]:
    """The tokenizer service on a free port under each hosting (it serves no torch or ONNX version)."""
    async with hosted("tokenizer", hosting, model_repository, request) as server:
        yield server


@pytest.fixture
async def vision_server(hosting: str, served: Served, request) -> AsyncIterator[GrpcServer]:
    """The vision service on a free port under each hosting, over the tiny CNN (or its ONNX export)."""
    async with hosted("vision", hosting, served.repository, request, served.ray_apps) as server:
        yield server


@pytest.fixture
async def transformer_server(hosting: str, served: Served, request) -> AsyncIterator[GrpcServer]:
    """The transformer service on a free port under each hosting, over MiniLM (or its ONNX exports)."""
    async with hosted("transformer", hosting, served.repository, request, served.ray_apps) as server:
        yield server


@pytest.fixture
async def text_server(hosting: str, served: Served, request) -> AsyncIterator[GrpcServer]:
    """The text service on a free port under each hosting, over the tiny LSTM (fp32 and int8; or its ONNX
    export)."""
    async with hosted("text", hosting, served.repository, request, served.ray_apps) as server:
        yield server
