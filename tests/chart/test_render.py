"""The chart renders, lints and validates: real helm, Kubernetes' own schemas, the CRDs' schemas."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    CORE_GROUPS,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    RELEASE,
    helm,
    of_kind,
    render,
    values_id,
)

VALUES = [None, *CI_VALUES]
CRDS = Path(__file__).parent / "crds"


def crd_schema(file: str, version: str) -> dict:
    """The openAPIV3Schema of one version of a CRD in tests/chart/crds (see its README)."""
    crd = yaml.safe_load((CRDS / file).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


def validate_custom(doc: dict, schema: dict) -> None:
    """Validate a custom resource against its CRD's schema. The schema itself is not checked against the
    JSON Schema metaschema: CRDs write patterns in Go's RE2 syntax (PrometheusRule's `^(?i)(abort|warn)?$`),
    which Python's `re` refuses; a pattern is only compiled when a document has the field.

    Raises:
        jsonschema.ValidationError: the document does not fit the schema.
    """
    jsonschema.validators.validator_for(schema)(schema).validate(doc)


def test_the_ci_values_files_cover_what_the_chart_must_handle():
    names = {path.name for path in CI_VALUES}
    assert {
        "gpu-values.yaml",
        "gpu-deployment-values.yaml",
        "autoscaling-off-values.yaml",
        "rayservice-values.yaml",
        "parent-values.yaml",
    } <= names


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_helm_lint_strict_passes(values: Path | None):
    helm("lint", "--strict", CHART, *(["--values", values] if values else []))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_every_core_object_passes_kubernetes_strict_validation(values: Path | None, version: str):
    core = [doc for doc in render(values, kube_version=version) if doc["apiVersion"] in CORE_GROUPS]
    assert len(core) >= 10
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_custom_resources_pass_their_crd_schemas(values: Path | None):
    docs = render(values)
    custom = [doc for doc in docs if doc["apiVersion"] not in CORE_GROUPS]
    schemas = {
        "ServiceMonitor": crd_schema("monitoring.coreos.com_servicemonitors.yaml", "v1"),
        "RayService": crd_schema("ray.io_rayservices.yaml", "v1"),
        "GRPCRoute": crd_schema("gateway.networking.k8s.io_grpcroutes.yaml", "v1"),
        "PrometheusRule": crd_schema("monitoring.coreos.com_prometheusrules.yaml", "v1"),
        "ScaledObject": crd_schema("keda.sh_scaledobjects.yaml", "v1alpha1"),
        "Certificate": crd_schema("cert-manager.io_certificates.yaml", "v1"),
    }
    assert {doc["kind"] for doc in custom} <= set(schemas)
    for doc in custom:
        validate_custom(doc, schemas[doc["kind"]])
    assert len(of_kind(docs, "ServiceMonitor")) == 1


def test_the_service_monitor_appears_only_where_the_operator_is_installed():
    plain = helm("template", RELEASE, CHART, "--namespace", NAMESPACE)
    assert "kind: ServiceMonitor" not in plain
    assert of_kind(render(), "ServiceMonitor")


def test_the_strict_schema_refuses_unknown_and_invalid_values():
    for assignment, complaint in (
        ("vision.replicas=2", "additional properties 'replicas' not allowed"),
        ("gateway.runtime=rayservice", "value must be 'deployment'"),
        ("modelRepository.source=s3", "value must be one of 'image', 'pvc'"),
        ("vision.autoscaling.targetCPUUtilizationPercentage=150", "maximum"),
    ):
        with pytest.raises(subprocess.CalledProcessError) as failed:
            render(None, assignment)
        assert complaint in failed.value.stderr, failed.value.stderr


def test_a_grace_period_shorter_than_the_drain_is_refused():
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(None, "vision.settings.drain_grace_seconds=40")
    assert "vision.terminationGracePeriodSeconds (30) must exceed its drain grace (40 s)" in failed.value.stderr
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(None, "tokenizer.settings.port=1")
    assert "tokenizer.settings.port is set by the chart" in failed.value.stderr


def test_notes_show_how_to_reach_the_gateway():
    notes = helm("install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client")
    assert f"port-forward service/{RELEASE}-maas-gateway 50051:50051" in notes
    assert 'maas infer text "Great taffy at a great price." --address 127.0.0.1:50051' in notes


def test_the_chart_packages_with_a_semver_version(tmp_path: Path):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert not chart["version"].startswith("v") and chart["version"].count(".") == 2
    helm("package", CHART, "--destination", tmp_path)
    assert (tmp_path / f"maas-{chart['version']}.tgz").exists()
