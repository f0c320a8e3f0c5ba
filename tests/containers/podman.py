"""Run maas's images with podman the way the chart runs them.

A service container gets the command, arguments and environment of its Deployment in `helm template`
of the chart's defaults, and its model repository the way the pod gets it: the init container runs
first into a directory (the pod's emptyDir), which the service then mounts read-only. Every container
runs `--network=host --read-only --tmpfs /tmp --user 10001`, bound to loopback on free ports: the
only changes made to the rendered environment are the bind address and the ports.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.cli.health import check
from tests.chart.conftest import of_kind, render
from tests.conftest import REPO_ROOT, free_port

RECORD = REPO_ROOT / "build" / "images.json"
REQUIRED = ("gateway", "tokenizer", "models", "models-ray", "model-repository")
READ_ONLY = ("--network=host", "--read-only", "--tmpfs", "/tmp")
RUN_FLAGS = (*READ_ONLY, "--user", "10001")
START_ORDER = ("tokenizer", "vision", "text", "transformer", "gateway")
ROUTING_DIR = "/etc/maas/routing"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman (with the store and settings `make` exports); return the finished process.

    Raises:
        subprocess.CalledProcessError: `check` and podman failed (its stderr is in the error).
    """
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done


def run_once(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """`podman run ARGS` to its end, detached; return its exit status and its output from the container's log.

    Attached, podman 4.3 sometimes loses the whole output of a container that exits at once (seen under
    load: a status of 1 and empty stderr); the log conmon writes keeps stdout and stderr apart and whole.
    The container is removed by its id.

    Raises:
        subprocess.CalledProcessError: `check` and the container (or podman) failed.
    """
    created = podman("run", "--detach", *args, timeout=timeout, check=check)
    if created.returncode:
        return created
    container = created.stdout.strip()
    try:
        status = int(podman("wait", container, timeout=timeout).stdout.strip())
        logs = podman("logs", container, timeout=timeout)
    finally:
        podman("rm", "--force", container, check=False)
    done = subprocess.CompletedProcess(["podman", "run", *args], status, logs.stdout, logs.stderr)
    if check and status:
        raise subprocess.CalledProcessError(status, done.args, done.stdout, done.stderr)
    return done


def one_line(done: subprocess.CompletedProcess) -> str:
    """The single line a failed container printed (stdout and stderr together).

    Raises:
        AssertionError: the container succeeded, or printed other than one line.
    """
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode != 0 and len(lines) == 1, (done.returncode, lines)
    return lines[0]


def recorded() -> dict[str, dict]:
    """build/images.json as `make images` wrote it: each image, the base image and the downloads."""
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def head() -> str:
    """The commit the work tree is at."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def optional_images_built_here() -> list[str]:
    """The images beyond `make images`'s (`models-cuda`) that build/images.json records as built from this
    commit: their tests exist only then, since CI builds none of them (no GPU, and a 5.4 GB image)."""
    commit = head()
    return sorted(
        name
        for name, entry in recorded().items()
        if name not in (*REQUIRED, "base", "downloads") and entry.get("revision", "").startswith(commit)
    )


def built_images() -> dict[str, dict]:
    """The images `make images` recorded in build/images.json (name -> reference, build seconds, size)
    and built from this commit; `models-cuda` only when `make images-cuda` built it from this commit too.

    Raises:
        AssertionError: one of `make images`'s images is missing, or was built from another commit.
    """
    assert RECORD.exists(), f"{RECORD} is missing: run `make images` first"
    commit = head()
    current = {}
    for name, entry in recorded().items():
        if name in ("base", "downloads"):
            continue
        found = podman("image", "inspect", "--format", "{{json .Labels}}", entry["image"], check=False)
        revision = json.loads(found.stdout)["org.opencontainers.image.revision"] if found.returncode == 0 else ""
        if revision.startswith(commit):
            current[name] = entry
        else:
            assert name not in REQUIRED, (
                f"{entry['image']} is {f'from {revision}' if revision else 'missing'}, the work tree is at "
                f"{commit}: run `make images`"
            )
    assert set(REQUIRED) <= set(current), f"build/images.json lacks {set(REQUIRED) - set(current)}: run `make images`"
    return current


def free_port_pair() -> int:
    """A free loopback port whose metrics port (+1000) is free too."""
    while True:
        port = free_port()
        if port + 1000 < 65536:
            try:
                with socket.create_server(("127.0.0.1", port + 1000)):
                    return port
            except OSError:
                continue


def cpu_quantity(value: str | int | float) -> float:
    """A Kubernetes CPU quantity (`500m`, `2`) in cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def container_env(box: dict) -> dict[str, str]:
    """A rendered container's environment as the kubelet would set it: literal values, and the
    Downward API's `requests.cpu` rounded up by its divisor."""
    env = {}
    for item in box["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        field_ref = item["valueFrom"]["resourceFieldRef"]
        assert field_ref["resource"] == "requests.cpu", item
        cores = cpu_quantity(box["resources"]["requests"]["cpu"]) / cpu_quantity(field_ref.get("divisor", "1"))
        env[item["name"]] = str(math.ceil(cores))
    return env


@dataclass
class ChartService:
    """One service as the chart's defaults render it."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    init_image: str | None = None
    init_command: list[str] = field(default_factory=list)
    init_mount: str = ""

    @property
    def prefix(self) -> str:
        return f"MAAS_{self.name.upper()}_"

    def bound(self, port: int) -> dict[str, str]:
        """The rendered environment with the service bound to loopback on `port` (metrics on +1000; the
        gateway's HTTP port, 8080 as rendered, on a free one: another gateway may hold 8080 here)."""
        ports = {"HOST": "127.0.0.1", "PORT": str(port), "METRICS_PORT": str(port + 1000)}
        if f"{self.prefix}HTTP_PORT" in self.env:
            ports["HTTP_PORT"] = "0"
        return {**self.env, **{self.prefix + key: value for key, value in ports.items()}}


def chart_services(*sets: str) -> dict[str, ChartService]:
    """Every service of `helm template` of the chart's defaults (with `--set` overrides `sets`), with its
    init container if it has one."""
    services = {}
    for doc in of_kind(render(None, *sets), "Deployment"):
        spec = doc["spec"]["template"]["spec"]
        (box,) = spec["containers"]
        name = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        service = ChartService(name, box["image"], [*box["command"], *map(str, box["args"])], container_env(box))
        for init in spec.get("initContainers", []):
            (mount,) = [m for m in init["volumeMounts"] if m["name"] == "models"]
            service.init_image = init["image"]
            service.init_command = [*init["command"], *map(str, init["args"])]
            service.init_mount = mount["mountPath"]
        services[name] = service
    return services


def routing_file() -> str:
    """The gateway's routing file as the chart's ConfigMap renders it."""
    (configmap,) = of_kind(render(), "ConfigMap")
    return configmap["data"]["routing.yaml"]


def deliver(service: ChartService, directory: Path) -> float:
    """Run the service's init container into `directory` (its emptyDir); return the seconds it took.

    Raises:
        subprocess.CalledProcessError: the init container failed.
    """
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    os.chown(directory, 10001, 10001)
    started = time.monotonic()
    podman(
        "run",
        "--rm",
        *RUN_FLAGS,
        "--volume",
        f"{directory}:{service.init_mount}",
        service.init_image,
        *service.init_command,
        timeout=300,
    )
    return time.monotonic() - started


def wait_serving(address: str, timeout: float, alive: Callable[[], bool]) -> float:
    """Poll grpc.health.v1 at `address` until it answers SERVING; return the monotonic time it did.

    Args:
        address: host:port.
        timeout: seconds to wait in all.
        alive: whether what should serve there still runs (asked about once a second).

    Raises:
        TimeoutError: not SERVING within `timeout` seconds, or `alive()` turned false first.
    """
    deadline = time.monotonic() + timeout
    asked = time.monotonic()
    while time.monotonic() < deadline:
        if check(address, "", 0.5) == "SERVING":
            return time.monotonic()
        if time.monotonic() - asked > 1.0:
            if not alive():
                raise TimeoutError(f"{address} exited before it was SERVING")
            asked = time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"{address} not SERVING after {timeout:.0f} s")


@dataclass
class Container:
    """A container this run started (by id)."""

    id: str
    service: str
    address: str

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.id).stdout.strip() == "true"

    def logs(self) -> str:
        done = podman("logs", self.id, check=False)
        return done.stdout + done.stderr


@contextmanager
def containers() -> Iterator[list[Container]]:
    """A list to put started containers in; every one is removed (by id) when the block ends."""
    started: list[Container] = []
    try:
        yield started
    finally:
        for container in started:
            podman("rm", "--force", "--time", "5", container.id, check=False)


def start(service: ChartService, port: int, models: Path | None, routing: Path | None) -> str:
    """Start the service's container detached, as its pod runs it; return the container id.

    Args:
        service: the rendered service.
        port: loopback port to bind (metrics on port + 1000).
        models: the delivered repository, mounted read-only where the chart mounts it; None for none.
        routing: the directory holding the gateway's routing.yaml (mounted read-only as its ConfigMap).
    """
    mounts = []
    if models is not None:
        mounts += ["--volume", f"{models}:{service.env['MAAS_MODEL_REPOSITORY']}:ro"]
    if routing is not None:
        mounts += ["--volume", f"{routing}:{ROUTING_DIR}:ro"]
    env = [f"--env={name}={value}" for name, value in service.bound(port).items()]
    done = podman("run", "--detach", *RUN_FLAGS, *mounts, *env, service.image, *service.command)
    return done.stdout.strip()
