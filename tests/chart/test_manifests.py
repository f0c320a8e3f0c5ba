"""What the rendered manifests must get right: selectors, ports, settings, commands, resources, security."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from unittest import mock

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings

from services.cli.main import _parser
from services.common.auth import load_api_keys
from services.gateway.routing import parse_routing
from services.gateway.spec import GatewaySettings
from services.text.spec import TextSettings
from services.tokenizer.spec import TokenizerSettings
from services.transformer.spec import TransformerSettings
from services.vision.spec import VisionSettings
from tests.chart.conftest import (
    CI_VALUES,
    RELEASE,
    component,
    container,
    of_kind,
    pod_labels,
    render,
    values_id,
    workloads,
)

VALUES = [None, *CI_VALUES]
CONTRACT = {"gateway": 50051, "tokenizer": 50052, "vision": 50053, "text": 50054, "transformer": 50055}
SETTINGS = {
    "gateway": GatewaySettings,
    "tokenizer": TokenizerSettings,
    "vision": VisionSettings,
    "text": TextSettings,
    "transformer": TransformerSettings,
}
SET_BY_CHART = {
    "host",
    "port",
    "metrics_port",
    "model_repository",
    "log_format",
    "routing_file",
    "api_keys_file",
    "http_port",
    "http_enabled",
}
GATEWAY_HTTP_PORT = 8080
SET_BY_TLS = {
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "health_port",
    "downstream_tls_ca_file",
    "downstream_tls_cert_file",
    "downstream_tls_key_file",
}
"""Set together by the chart's `tls` block (a certificate needs its key); tests/chart/test_production.py loads them."""


RAY_MODELS = {"vision": ["fashion_cnn"], "text": ["review_lstm"], "transformer": ["minilm_embed", "minilm_sentiment"]}


def ray_runtime(values: Path | None) -> set[str]:
    """The services a values file moves to the `rayservice` runtime."""
    given = yaml.safe_load(values.read_text()) if values else {}
    return {name for name, block in given.items() if isinstance(block, dict) and block.get("runtime") == "rayservice"}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels/matchExpressions, or a plain map) selects `labels`."""
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(key) != value for key, value in match.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if (
            (operator == "In" and value not in expression["values"])
            or (operator == "NotIn" and value in expression["values"])
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


def env_of(doc: dict) -> dict[str, str]:
    """The container's literal environment (entries taken from the Downward API left out)."""
    return {item["name"]: item["value"] for item in container(doc)["env"] if "value" in item}


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_selectors_select_exactly_their_components_pods(values: Path | None):
    docs = render(values)
    pods = {component(doc): pod_labels(doc) for doc in of_kind(docs, "Deployment")}
    assert set(pods) == set(CONTRACT) - ray_runtime(values)
    for rayservice in of_kind(docs, "RayService"):
        cluster = rayservice["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        labels = [group["template"]["metadata"]["labels"] for group in groups]
        assert all(group == labels[0] for group in labels)
        pods["ray"] = labels[0]
    for deployment in of_kind(docs, "Deployment"):
        assert selects(deployment["spec"]["selector"], pod_labels(deployment))
    for kind, path in (("Service", ("spec", "selector")), ("PodDisruptionBudget", ("spec", "selector"))):
        for doc in of_kind(docs, kind):
            selector = doc[path[0]][path[1]]
            assert [name for name, labels in pods.items() if selects(selector, labels)] == [component(doc)]
    for doc in of_kind(docs, "NetworkPolicy"):
        selected = [name for name, labels in pods.items() if selects(doc["spec"]["podSelector"], labels)]
        assert selected == [component(doc)]
    deployments = {doc["metadata"]["name"] for doc in of_kind(docs, "Deployment")}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_probes_and_services_point_at_ports_the_containers_open(values: Path | None):
    docs = render(values)
    for deployment in of_kind(docs, "Deployment"):
        name, box = component(deployment), container(deployment)
        ports = {port["name"]: port["containerPort"] for port in box["ports"]}
        env = env_of(deployment)
        prefix = f"MAAS_{name.upper()}_"
        probed = {"grpc": CONTRACT[name], "metrics": CONTRACT[name] + 1000}
        if f"{prefix}TLS_CERT_FILE" in env:
            probed["health"] = int(env[f"{prefix}HEALTH_PORT"])
        if name == "gateway":
            probed["http"] = GATEWAY_HTTP_PORT
            assert (env[f"{prefix}HTTP_ENABLED"], env[f"{prefix}HTTP_PORT"]) == ("true", str(GATEWAY_HTTP_PORT))
        assert ports == probed
        assert (env[f"{prefix}HOST"], env[f"{prefix}PORT"], env[f"{prefix}METRICS_PORT"]) == (
            "0.0.0.0",
            str(ports["grpc"]),
            str(ports["metrics"]),
        )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert box[probe]["grpc"]["port"] == ports.get("health", ports["grpc"])
        startup = box["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    pods = {component(doc): doc for doc in of_kind(docs, "Deployment")}
    targets: dict[str, set[str]] = {}
    for service in of_kind(docs, "Service"):
        targets.setdefault(component(service), set()).update(port["targetPort"] for port in service["spec"]["ports"])
        if service["metadata"]["name"] != f"{RELEASE}-maas-gateway":
            assert service["spec"]["clusterIP"] == "None", "headless: the gateway's round_robin reaches every pod"
    for name, doc in pods.items():
        served = {"grpc", "metrics", "http"} if name == "gateway" else {"grpc", "metrics"}
        assert targets[name] == served <= {port["name"] for port in container(doc)["ports"]}


def test_the_gateway_serves_http_where_its_service_points_unless_turned_off():
    def gateway_of(docs: tuple[dict, ...]) -> dict:
        (deployment,) = [doc for doc in of_kind(docs, "Deployment") if component(doc) == "gateway"]
        return deployment

    docs = render(None)
    (service,) = [doc for doc in of_kind(docs, "Service") if doc["metadata"]["name"] == f"{RELEASE}-maas-gateway"]
    (http,) = [port for port in service["spec"]["ports"] if port["name"] == "http"]
    assert (http["port"], http["targetPort"], http["appProtocol"]) == (8080, "http", "http")
    loaded = _from_env(GatewaySettings, env_of(gateway_of(docs)))
    assert (loaded.http_enabled, loaded.http_port) == (True, GATEWAY_HTTP_PORT)
    off = render(None, "gateway.http.enabled=false")
    assert "http" not in {port["name"] for port in container(gateway_of(off))["ports"]}
    assert not _from_env(GatewaySettings, env_of(gateway_of(off))).http_enabled
    assert "http" not in {port["name"] for doc in of_kind(off, "Service") for port in doc["spec"]["ports"]}
    policies = [rule for doc in of_kind(off, "NetworkPolicy") for rule in doc["spec"]["ingress"]]
    assert "http" not in {port["port"] for rule in policies for port in rule.get("ports", [])}


def _candidates(field_type: typing.Any, default: typing.Any) -> list[typing.Any]:
    """Values to try for a settings field, other than its default."""
    origin = typing.get_origin(field_type)
    if origin is typing.Literal:
        return [choice for choice in typing.get_args(field_type) if choice != default]
    if field_type is bool:
        return [not default]
    if field_type in (int, float):
        return [default + 1, default * 2, 1, 2] if default is not None else [1]
    if field_type is Path:
        return ["/etc/maas/elsewhere.yaml"]
    return ["WARNING", "x", "cpu"]


def _other_value(settings: type[BaseSettings], name: str) -> typing.Any:
    """A valid value of `settings.name` that differs from its default, found by asking the class."""
    field = settings.model_fields[name]
    for candidate in _candidates(field.annotation, field.default):
        try:
            settings.model_validate({name: candidate})
        except ValidationError:
            continue
        return candidate
    raise AssertionError(f"{settings.__name__}.{name}: no valid value other than the default found")


def _from_env(settings: type[BaseModel], env: dict[str, str]) -> BaseModel:
    with mock.patch.dict(os.environ, env, clear=True):
        return settings()


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_setting_of_the_settings_class_can_be_set_from_values(service: str):
    settings = SETTINGS[service]
    fields = sorted(set(settings.model_fields) - SET_BY_CHART - SET_BY_TLS)
    assert fields, f"{settings.__name__} has no settings of its own"
    wanted = {name: _other_value(settings, name) for name in fields}
    sets = [f"{service}.settings.{name}={value}" for name, value in wanted.items()]
    sets += ["modelRepository.path=/srv/models", "logFormat=text"]
    if service != "gateway" and "drain_grace_seconds" in wanted:
        sets.append(f"{service}.terminationGracePeriodSeconds={int(wanted['drain_grace_seconds']) + 10}")
    if service == "gateway" and "drain_grace_seconds" in wanted:
        sets.append(f"gateway.terminationGracePeriodSeconds={int(wanted['drain_grace_seconds']) + 10}")
    (deployment,) = [doc for doc in of_kind(render(None, *sets), "Deployment") if component(doc) == service]
    loaded = _from_env(settings, env_of(deployment))
    for name, value in wanted.items():
        got = getattr(loaded, name)
        assert str(got) == str(value) if isinstance(got, Path) else got == value, name
    assert (loaded.host, loaded.port, loaded.metrics_bind_port) == (
        "0.0.0.0",
        CONTRACT[service],
        CONTRACT[service] + 1000,
    )
    assert (str(loaded.model_repository), loaded.log_format) == ("/srv/models", "text")


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_container_commands_are_ones_the_cli_accepts(values: Path | None):
    docs = render(values)
    services = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Service")}
    for doc, _ in workloads(docs):
        box = container(doc)
        assert box["command"] == ["maas"]
        parsed = _parser().parse_args([str(arg) for arg in box["args"]])
        if doc["kind"] == "Deployment":
            assert (parsed.command, parsed.service) == ("run", component(doc))
            continue
        assert parsed.command == "health"
        assert sorted(parsed.model) == sorted(m for name in ray_runtime(values) for m in RAY_MODELS[name])
        assert parsed.addresses[0].rsplit(":", 1)[0].endswith("-gateway")
        checked = {}
        for address in parsed.addresses:
            host, port = address.rsplit(":", 1)
            (grpc_port,) = [p["port"] for p in services[host]["spec"]["ports"] if p["name"] == "grpc"]
            assert int(port) == grpc_port
            checked[component(services[host])] = address
        assert set(checked) == set(CONTRACT) - ray_runtime(values)


def test_resources_and_gpus_land_where_the_values_say():
    gpu = next(path for path in CI_VALUES if path.name == "gpu-values.yaml")
    by_name = {component(doc): doc for doc in of_kind(render(gpu), "Deployment")}
    for name, doc in by_name.items():
        limits = container(doc)["resources"]["limits"]
        spec = doc["spec"]["template"]["spec"]
        if name in ("transformer", "vision"):
            assert limits["nvidia.com/gpu"] == 1
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in spec
    transformer = container(by_name["transformer"])
    assert transformer["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert env_of(by_name["transformer"])["MAAS_TRANSFORMER_MAX_BATCH_SIZE"] == "64"
    defaults = {component(doc): doc for doc in of_kind(render(), "Deployment")}
    assert all("nvidia.com/gpu" not in container(doc)["resources"]["limits"] for doc in defaults.values())


def test_model_services_run_as_many_torch_threads_as_cpus_they_request():
    sets = ("text.settings.num_threads=3", "vision.resources.requests.cpu=null")
    by_name = {component(doc): doc for doc in of_kind(render(None, *sets), "Deployment")}
    threads = {
        name: [item for item in container(doc)["env"] if item["name"].endswith("_NUM_THREADS")]
        for name, doc in by_name.items()
    }
    assert threads["transformer"] == [
        {
            "name": "MAAS_TRANSFORMER_NUM_THREADS",
            "valueFrom": {
                "resourceFieldRef": {"containerName": "transformer", "resource": "requests.cpu", "divisor": "1"}
            },
        }
    ]
    assert container(by_name["transformer"])["resources"]["requests"]["cpu"] == "2"
    assert threads["text"] == [{"name": "MAAS_TEXT_NUM_THREADS", "value": "3"}], "a setting wins"
    assert threads["vision"] == [], "no CPU request: the service's own default"
    assert threads["gateway"] == threads["tokenizer"] == [], "no torch there"


def test_autoscaling_off_sets_replicas_and_drops_hpas_and_pdbs():
    off = next(path for path in CI_VALUES if path.name == "autoscaling-off-values.yaml")
    docs = render(off)
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    replicas = {component(doc): doc["spec"]["replicas"] for doc in of_kind(docs, "Deployment")}
    assert replicas == {"gateway": 3, "tokenizer": 2, "vision": 2, "text": 1, "transformer": 4}
    assert {component(doc) for doc in of_kind(docs, "PodDisruptionBudget")} == {"gateway", "text", "transformer"}
    defaults = render()
    assert all("replicas" not in doc["spec"] for doc in of_kind(defaults, "Deployment"))
    assert len(of_kind(defaults, "HorizontalPodAutoscaler")) == 5


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_every_pod_runs_locked_down_with_writable_tmp_only(values: Path | None):
    for doc, spec in workloads(render(values)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] and pod["runAsUser"] != 0 and pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        box = container(doc)
        context = box["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context["capabilities"]["drop"] == ["ALL"]
        if doc["kind"] == "Deployment":
            assert any(mount["mountPath"] == "/tmp" for mount in box["volumeMounts"])
            assert all(mount.get("readOnly") for mount in box["volumeMounts"] if mount["mountPath"] != "/tmp")
            assert spec["terminationGracePeriodSeconds"] > 10


def test_the_model_repository_comes_from_a_pvc_when_the_values_say_so():
    pvc = next(path for path in CI_VALUES if path.name == "pvc-values.yaml")
    docs = render(pvc)
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    for doc in of_kind(docs, "Deployment"):
        name = component(doc)
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
        if name == "gateway":
            assert "models" not in volumes
            continue
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert env_of(doc)["MAAS_MODEL_REPOSITORY"] == "/models"
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container(doc)["volumeMounts"]
    assert not of_kind(render(), "PersistentVolumeClaim")


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_the_gateways_routing_and_keys_files_load_with_the_gateways_own_parsers(values: Path | None, tmp_path: Path):
    docs = render(values)
    (configmap,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-routing")]
    routing = parse_routing(configmap["data"]["routing.yaml"], "the routing ConfigMap")
    services = {doc["metadata"]["name"]: component(doc) for doc in of_kind(docs, "Service")}
    ray = ray_runtime(values)
    for name, target in routing.targets.items():
        host, port = target.address.removeprefix("dns:///").rsplit(":", 1)
        if name in ray:
            assert host.endswith("-ray-serve") and port == "9000"
            assert target.metadata == {"application": name}
        else:
            assert services[host] == name and int(port) == CONTRACT[name] and not target.metadata
    assert set(routing.models) == {
        "tokenizer",
        "fashion_cnn",
        "review_lstm",
        "minilm_embed",
        "minilm_sentiment",
    }
    (gateway,) = [doc for doc in of_kind(docs, "Deployment") if component(doc) == "gateway"]
    env = env_of(gateway)
    assert env["MAAS_GATEWAY_ROUTING_FILE"] == "/etc/maas/routing/routing.yaml"
    secrets = of_kind(docs, "Secret")
    if values is None or values.name != "auth-values.yaml":
        assert not secrets and "MAAS_GATEWAY_API_KEYS_FILE" not in env
        return
    assert routing.models["fashion_cnn"].timeout_seconds == 2 and routing.models["fashion_cnn"].retries.in_flight
    (secret,) = secrets
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(secret["stringData"]["api-keys.yaml"])
    keys = load_api_keys(keys_file)
    assert len(keys) == 2
    assert keys.check([("authorization", "Bearer a-long-random-string-for-ci")]) == "ci"
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert env["MAAS_GATEWAY_API_KEYS_FILE"] == "/etc/maas/auth/api-keys.yaml"


@pytest.mark.parametrize("values", VALUES, ids=values_id)
def test_every_server_ages_its_connections_and_the_gateway_resolves_again_within_an_age(values: Path | None):
    loaded = {
        component(doc): _from_env(SETTINGS[component(doc)], env_of(doc))
        for doc in of_kind(render(values), "Deployment")
    }
    for settings in loaded.values():
        assert (settings.max_connection_age_s, settings.max_connection_age_grace_s) == (60, 10)
    gateway = loaded.get("gateway")
    assert gateway is None or gateway.dns_min_resolution_interval_s < gateway.max_connection_age_s
    (vision,) = [
        doc
        for doc in of_kind(render(None, "vision.settings.max_connection_age_s=5"), "Deployment")
        if component(doc) == "vision"
    ]
    assert _from_env(SETTINGS["vision"], env_of(vision)).max_connection_age_s == 5, "a service's settings win"


def test_a_service_given_gpus_computes_on_cuda():
    gpu = next(path for path in CI_VALUES if path.name == "gpu-values.yaml")
    for doc in of_kind(render(gpu), "Deployment"):
        settings = _from_env(SETTINGS[component(doc)], env_of(doc))
        has_gpu = "nvidia.com/gpu" in container(doc)["resources"]["limits"]
        assert getattr(settings, "device", "no torch") == (
            "cuda" if has_gpu else "auto" if hasattr(settings, "device") else "no torch"
        )
    (vision,) = [
        doc for doc in of_kind(render(gpu, "vision.settings.device=cuda:1"), "Deployment") if component(doc) == "vision"
    ]
    assert [item["value"] for item in container(vision)["env"] if item["name"] == "MAAS_VISION_DEVICE"] == ["cuda:1"]
