"""Rendering the chart with the real helm binary (installed into the venv by scripts/k8s_tools.py)."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"
CHART = REPO_ROOT / "helm" / "maas"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "rel", "maas"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CORE_GROUPS = ("v1", "apps/v1", "batch/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1")
SERVICES = ("gateway", "tokenizer", "vision", "text", "transformer")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chart tests need helm and kubectl; `make test` installs them, so their absence is an error."""
    if any(item.path.is_relative_to(Path(__file__).parent) for item in items) and not HELM.exists():
        raise pytest.UsageError(f"{HELM} is missing: run `python scripts/k8s_tools.py` (make test does)")


def helm(*args: str | Path) -> str:
    """Run helm; return its stdout. Raises CalledProcessError with helm's stderr on failure."""
    done = subprocess.run([HELM, *map(str, args)], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


@cache
def render(values: Path | None = None, *sets: str, kube_version: str | None = None) -> tuple[dict, ...]:
    """The chart's manifests (hooks included) for a values file and `--set` overrides, as dicts.

    `monitoring.coreos.com/v1` is declared available, as on a cluster with the Prometheus operator.
    `kube_version` renders for that Kubernetes version (helm's `--kube-version`; default: helm's own).
    """
    args = ["template", RELEASE, CHART, "--namespace", NAMESPACE, "--api-versions", "monitoring.coreos.com/v1"]
    args += ["--values", values] if values else []
    args += ["--kube-version", kube_version] if kube_version else []
    for assignment in sets:
        args += ["--set", assignment]
    return tuple(doc for doc in yaml.safe_load_all(helm(*args)) if doc)


def write_values(directory: Path, values: dict) -> Path:
    """A values file holding `values` (for values `--set` cannot type, e.g. fractions and lists)."""
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def of_kind(docs: tuple[dict, ...], kind: str) -> list[dict]:
    """The documents of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


def workloads(docs: tuple[dict, ...]) -> list[tuple[dict, dict]]:
    """(object, pod spec) of every Deployment and bare Pod."""
    found = [(doc, doc["spec"]["template"]["spec"]) for doc in of_kind(docs, "Deployment")]
    return found + [(doc, doc["spec"]) for doc in of_kind(docs, "Pod")]


def pod_labels(doc: dict) -> dict[str, str]:
    """The labels of the pods a Deployment or Pod makes."""
    return doc["spec"]["template"]["metadata"]["labels"] if doc["kind"] == "Deployment" else doc["metadata"]["labels"]


def component(doc: dict) -> str:
    """The `app.kubernetes.io/component` of a rendered object."""
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_spec(doc: dict) -> dict:
    """The pod spec of a Deployment or a bare Pod."""
    return doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]


def container(doc: dict) -> dict:
    """The container of a Deployment's or Pod's service: the one named after its component, else the only one."""
    containers = pod_spec(doc)["containers"]
    named = [box for box in containers if box["name"] == component(doc)]
    (only,) = named or containers
    return only


def rayservice_of(docs: tuple[dict, ...]) -> dict:
    """The one RayService among `docs`."""
    (rayservice,) = of_kind(docs, "RayService")
    return rayservice


def every_component(block: dict, ray_service: str) -> dict:
    """Values giving `block` to every service, the Ray head and the Ray workers, `ray_service` moved to Ray."""
    values = {service: dict(block) for service in SERVICES}
    values[ray_service]["runtime"] = "rayservice"
    values["ray"] = {"head": dict(block), "workers": dict(block)}
    return values


def component_pods(docs: tuple[dict, ...]) -> dict[str, dict]:
    """The pod spec of each component: each Deployment's by component, `ray head` and `ray workers`."""
    specs = {component(doc): pod_spec(doc) for doc in of_kind(docs, "Deployment")}
    cluster = rayservice_of(docs)["spec"]["rayClusterConfig"]
    specs["ray head"] = cluster["headGroupSpec"]["template"]["spec"]
    specs["ray workers"] = cluster["workerGroupSpecs"][0]["template"]["spec"]
    return specs


def values_id(values: Path | None) -> str:
    """Test id of a values file."""
    return values.name if values else "defaults"
