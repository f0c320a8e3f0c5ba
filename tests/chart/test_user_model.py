"""The chart runs a model you serve yourself from one values block (docs/examples/fashion_linear/values.yaml):
a Deployment running `maas serve`, its headless Service, a gateway route, its NetworkPolicy and settings."""

from __future__ import annotations

import os
import subprocess
from unittest import mock

import pytest
import yaml

from services.cli.main import _parser
from services.common.spec import user_spec
from services.gateway.routing import parse_routing
from tests.chart.conftest import CHART, RELEASE, component, container, helm, of_kind, render
from tests.chart.test_manifests import env_of
from tests.chart.test_network_policy import _pods, admitted
from tests.conftest import REPO_ROOT
from tests.contract.test_user_model import EXAMPLE, NAME, REFERENCE

EXAMPLE_VALUES = EXAMPLE / "values.yaml"
PORT = 50060


def test_the_example_values_block_runs_maas_serve_with_its_settings():
    docs = render(EXAMPLE_VALUES)
    (deployment,) = [doc for doc in of_kind(docs, "Deployment") if component(doc) == NAME]
    box = container(deployment)
    assert box["command"] == ["maas"]
    parsed = _parser().parse_args([str(arg) for arg in box["args"]])
    assert (parsed.command, parsed.model, parsed.name) == ("serve", REFERENCE, NAME)
    assert box["image"].endswith("/maas-fashion-linear:0.1.0")
    assert {port["name"]: port["containerPort"] for port in box["ports"]} == {"grpc": PORT, "metrics": PORT + 1000}
    assert box["startupProbe"]["grpc"]["port"] == PORT, "keys the block leaves out take a model service's defaults"
    assert [hpa for hpa in of_kind(docs, "HorizontalPodAutoscaler") if component(hpa) == NAME]
    threads = next(item for item in box["env"] if item["name"] == "MAAS_FASHION_LINEAR_NUM_THREADS")
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    spec = user_spec(REFERENCE, NAME, str(EXAMPLE))
    with mock.patch.dict(os.environ, env_of(deployment), clear=True):
        settings = spec.read_settings()
    assert (settings.host, settings.port, settings.metrics_bind_port) == ("0.0.0.0", PORT, PORT + 1000)
    assert (settings.max_batch_size, str(settings.model_repository)) == (64, "/opt/maas/model_repository")


def test_the_gateway_routes_the_example_and_only_the_gateway_and_the_test_pod_reach_it():
    docs = render(EXAMPLE_VALUES)
    (routing_map,) = [doc for doc in of_kind(docs, "ConfigMap") if "routing.yaml" in doc["data"]]
    routing = parse_routing(routing_map["data"]["routing.yaml"], "routing ConfigMap")
    host = f"{RELEASE}-maas-{NAME}"
    assert routing.target_of(NAME) == NAME and routing.targets[NAME].address == f"dns:///{host}:{PORT}"
    assert {"tokenizer", "fashion_cnn", "review_lstm", "minilm_embed", "minilm_sentiment"} <= set(routing.models)
    (service,) = [doc for doc in of_kind(docs, "Service") if component(doc) == NAME]
    assert service["spec"]["clusterIP"] == "None"
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]}["grpc"] == PORT
    pods = _pods(docs)
    policies = of_kind(docs, "NetworkPolicy")
    assert {name for name, pod in pods.items() if admitted(policies, pod, pods[NAME], "grpc")} == {
        "gateway",
        "helm test",
    }
    (test_pod,) = of_kind(docs, "Pod")
    assert any(str(arg).startswith(host) and str(arg).endswith(f":{PORT}") for arg in container(test_pod)["args"])


def test_the_example_values_pass_strict_lint_and_kubernetes_validation(tmp_path):
    helm("lint", "--strict", CHART, "--values", EXAMPLE_VALUES)
    manifests = tmp_path / "manifests.yaml"
    core = [doc for doc in render(EXAMPLE_VALUES) if doc["kind"] in ("Deployment", "Service", "NetworkPolicy")]
    manifests.write_text(yaml.safe_dump_all(core))
    validate = REPO_ROOT / ".venv" / "bin" / "kubernetes-validate"
    subprocess.run([validate, "-k", "1.33.0", "--strict", manifests], check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda values: values["vision"].update(model=REFERENCE), "additional properties 'model' not allowed"),
        (lambda values: values.update(fashion_linear=values.pop(NAME)), "lowercase letters, digits and '-'"),
        (lambda values: values[NAME].pop("port"), "missing property 'port'"),
    ],
    ids=["a built-in service's block", "a key that is no Kubernetes name", "no port"],
)
def test_a_wrong_user_block_is_refused_with_a_reason(change, message: str, tmp_path):
    values = {"vision": {}, **yaml.safe_load(EXAMPLE_VALUES.read_text())}
    change(values)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        helm("template", RELEASE, CHART, "--values", path)
    assert message in failed.value.stderr
