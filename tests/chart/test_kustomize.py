"""k8s/: the kustomize base rendered from the chart is current, and each overlay builds and validates."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import KUBECTL, KUBERNETES_VERSIONS, component, container, of_kind, render
from tests.chart.test_manifests import env_of
from tests.conftest import PYTHON, REPO_ROOT

OVERLAYS = REPO_ROOT / "k8s" / "overlays"
SERVICE_DNS = re.compile(r"\b[a-z0-9-]+\.([a-z0-9-]+)\.svc\b")
"""`<service>.<namespace>.svc`: a Service name qualified with a namespace."""


def build(overlay: str) -> tuple[dict, ...]:
    """`kubectl kustomize` of an overlay (or of `../base`), as dicts."""
    done = subprocess.run(
        [KUBECTL, "kustomize", OVERLAYS / overlay], capture_output=True, text=True, timeout=60, check=True
    )
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def test_the_committed_base_is_a_fresh_render_of_the_chart():
    done = subprocess.run(
        [PYTHON, "scripts/render_manifests.py", "--check"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", ["cpu-dev", "gpu-prod"])
def test_each_overlay_builds_and_validates(overlay: str, version: str):
    docs = build(overlay)
    assert len(of_kind(docs, "Deployment")) == 5
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _dialled_hosts(doc: dict) -> Iterator[str]:
    for text in _strings(doc):
        for routing in yaml.safe_load(text).get("targets", {}).values() if text.startswith("models:") else ():
            yield routing["address"].removeprefix("dns:///").rsplit(":", 1)[0]


@pytest.mark.parametrize("source", ["chart", "../base", "cpu-dev", "gpu-prod"])
def test_no_address_names_another_namespace(source: str):
    docs = render() if source == "chart" else build(source)
    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        for text in _strings(doc):
            for named in SERVICE_DNS.findall(text):
                assert named == namespace, f"{doc['kind']} {doc['metadata']['name']} in {namespace} dials {named}"
    services = {doc["metadata"]["name"] for doc in of_kind(docs, "Service")}
    (routing,) = of_kind(docs, "ConfigMap")
    hosts = set(_dialled_hosts(routing))
    assert len(hosts) == 4 and hosts <= services, "a bare name: the pod's DNS search path adds its own namespace"


def test_cpu_dev_runs_one_pod_per_service_without_autoscaling():
    docs = build("cpu-dev")
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["name"] == "maas-dev"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {doc["metadata"].get("namespace", "maas-dev") for doc in docs} == {"maas-dev"}
    base_env = {component(doc): env_of(doc) for doc in of_kind(build("../base"), "Deployment")}
    for doc in of_kind(docs, "Deployment"):
        assert doc["spec"]["replicas"] == 1
        assert env_of(doc) == {**base_env[component(doc)], "MAAS_LOG_FORMAT": "text"}


def test_gpu_prod_puts_the_cnn_and_minilm_on_gpu_nodes_computing_on_cuda():
    for doc in of_kind(build("gpu-prod"), "Deployment"):
        limits, spec = container(doc)["resources"]["limits"], doc["spec"]["template"]["spec"]
        device = env_of(doc).get(f"MAAS_{component(doc).upper()}_DEVICE")
        if component(doc) in ("vision", "transformer"):
            assert limits["nvidia.com/gpu"] == 1 and spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert device == "cuda"
            assert doc["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
        else:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in spec and device is None
        if component(doc) == "transformer":
            assert env_of(doc)["MAAS_TRANSFORMER_MAX_BATCH_SIZE"] == "64"
