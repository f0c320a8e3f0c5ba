"""maas as a dependency of a parent chart (tests/chart/parent, an umbrella chart with
`condition: maas.enabled`): the parent builds, lints and renders; `global` keys meant for the parent's
other dependencies pass maas's strict schema; maas.enabled=false leaves maas out."""

from __future__ import annotations

import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    CORE_GROUPS,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    container,
    helm,
    of_kind,
)

PARENT = Path(__file__).parent / "parent"
AS_A_DEPENDENCY = next(path for path in CI_VALUES if path.name == "parent-values.yaml")


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent chart with its maas dependency built (`helm dependency build`, from this checkout)."""
    chart = tmp_path_factory.mktemp("parent") / "platform"
    shutil.copytree(PARENT, chart)
    metadata = yaml.safe_load((chart / "Chart.yaml").read_text())
    (dependency,) = metadata["dependencies"]
    dependency["repository"] = CHART.as_uri()
    (chart / "Chart.yaml").write_text(yaml.safe_dump(metadata))
    helm("dependency", "build", chart)
    return chart


@pytest.fixture(scope="module")
def values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent's values: ci/parent-values.yaml under `maas`, its `global` at the top, as a parent sets it."""
    given = yaml.safe_load(AS_A_DEPENDENCY.read_text())
    path = tmp_path_factory.mktemp("values") / "platform-values.yaml"
    path.write_text(yaml.safe_dump({"global": given.pop("global"), "maas": given}))
    return path


def render_parent(chart: Path, *args: str | Path) -> tuple[dict, ...]:
    out = helm("template", "platform", chart, "--namespace", NAMESPACE, *args)
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def test_the_parent_lints_strictly(parent: Path, values: Path):
    helm("lint", "--strict", parent, "--values", values)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_parent_renders_maas_with_its_globals_for_each_kubernetes_version(parent: Path, values: Path, version: str):
    docs = render_parent(parent, "--values", values, "--kube-version", version)
    (own,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"] == "platform-platform"]
    assert own["data"] == {"storageClass": "fast-ssd", "maas": "true"}
    deployments = of_kind(docs, "Deployment")
    assert len(deployments) == 5
    images = {container(doc)["image"] for doc in deployments}
    assert all(image.startswith("mirror.example.com/maas/") for image in images), "global.imageRegistry wins"
    assert all(doc["metadata"]["annotations"]["platform.example.com/release-train"] == "2026.12" for doc in deployments)
    assert of_kind(docs, "Ingress")
    for doc in docs:
        if doc["apiVersion"] in CORE_GROUPS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_maas_enabled_false_leaves_maas_out(parent: Path, values: Path):
    docs = render_parent(parent, "--values", values, "--set", "maas.enabled=false")
    assert [(doc["kind"], doc["metadata"]["name"]) for doc in docs] == [("ConfigMap", "platform-platform")]
