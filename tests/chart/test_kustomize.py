"""k8s/: the kustomize base rendered from the chart is current, and each overlay builds and validates."""

from __future__ import annotations

import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import KUBECTL, KUBERNETES_VERSIONS, of_kind
from tests.chart.test_manifests import component, container, env_of
from tests.conftest import PYTHON, REPO_ROOT

OVERLAYS = REPO_ROOT / "k8s" / "overlays"


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


def test_cpu_dev_runs_one_pod_per_service_without_autoscaling():
    docs = build("cpu-dev")
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    assert {doc["metadata"]["namespace"] for doc in docs} == {"maas-dev"}
    base_env = {component(doc): env_of(doc) for doc in of_kind(build("../base"), "Deployment")}
    for doc in of_kind(docs, "Deployment"):
        assert doc["spec"]["replicas"] == 1
        assert env_of(doc) == {**base_env[component(doc)], "MAAS_LOG_FORMAT": "text"}


def test_gpu_prod_puts_the_cnn_and_minilm_on_gpu_nodes():
    for doc in of_kind(build("gpu-prod"), "Deployment"):
        limits, spec = container(doc)["resources"]["limits"], doc["spec"]["template"]["spec"]
        if component(doc) in ("vision", "transformer"):
            assert limits["nvidia.com/gpu"] == 1 and spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        else:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in spec
        if component(doc) == "transformer":
            assert env_of(doc)["MAAS_TRANSFORMER_MAX_BATCH_SIZE"] == "64"
