"""What an operator expects of a chart: one registry for every image, annotations and extra volumes,
init containers and sidecars on every pod, a gateway that rolls when its API keys change (and only
reloads when routes change), no metrics port on its LoadBalancer, an optional Ingress or GRPCRoute."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.gateway.routing import parse_routing
from tests.chart.conftest import (
    CI_VALUES,
    SERVICES,
    component,
    component_pods,
    container,
    every_component,
    of_kind,
    pod_labels,
    rayservice_of,
    render,
    write_values,
)
from tests.chart.test_manifests import selects

AUTH = next(path for path in CI_VALUES if path.name == "auth-values.yaml")
PVC = next(path for path in CI_VALUES if path.name == "pvc-values.yaml")
PARENT = next(path for path in CI_VALUES if path.name == "parent-values.yaml")
GPU_POOL = next(path for path in CI_VALUES if path.name == "gpu-deployment-values.yaml")


def test_global_image_registry_wins_over_each_images_own(tmp_path: Path):
    values = {service: {"image": {"registry": "registry.example.com"}} for service in SERVICES}
    values |= {
        "global": {"imageRegistry": "mirror.example.com"},
        "ray": {"image": {"registry": "registry.example.com"}},
    }
    values["vision"]["runtime"] = "rayservice"
    docs = render(write_values(tmp_path, values))
    images = [container(doc)["image"] for doc in of_kind(docs, "Deployment") + of_kind(docs, "Pod")]
    cluster = rayservice_of(docs)["spec"]["rayClusterConfig"]
    images += [group["template"]["spec"]["containers"][0]["image"] for group in cluster["workerGroupSpecs"]]
    assert len(images) == 6 and all(image.startswith("mirror.example.com/maas/") for image in images), images


def test_common_annotations_reach_every_resource_beside_its_own(tmp_path: Path):
    values = {
        "commonAnnotations": {"example.com/team": "ml"},
        "vision": {"runtime": "rayservice"},
        "modelRepository": {"source": "pvc"},
        "gateway": {
            "auth": {"enabled": True, "keys": [{"name": "ci", "key": "a-long-random-string-for-ci"}]},
            "service": {"annotations": {"example.com/lb": "internal"}},
            "ingress": {"enabled": True, "hosts": ["maas.example.com"]},
            "grpcRoute": {"enabled": True, "parentRefs": [{"name": "public"}]},
        },
    }
    docs = render(write_values(tmp_path, values))
    assert {"Ingress", "GRPCRoute", "RayService", "PersistentVolumeClaim", "Secret", "ServiceMonitor"} <= {
        doc["kind"] for doc in docs
    }
    for doc in docs:
        assert doc["metadata"]["annotations"]["example.com/team"] == "ml", (doc["kind"], doc["metadata"]["name"])
    own = {(doc["kind"], doc["metadata"]["name"]): doc["metadata"]["annotations"] for doc in docs}
    assert own[("Service", "rel-maas-gateway")]["example.com/lb"] == "internal"
    assert own[("PersistentVolumeClaim", "rel-maas-models")]["helm.sh/resource-policy"] == "keep"
    assert own[("Pod", "rel-maas-test")]["helm.sh/hook"] == "test"


def test_extra_volumes_mounts_init_containers_and_sidecars_reach_every_pod(tmp_path: Path):
    locked = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    extras = {
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True}],
        "initContainers": [{"name": "wait", "image": "busybox:1.37", "securityContext": locked}],
        "sidecars": [{"name": "agent", "image": "agent:1", "securityContext": locked}],
    }
    specs = component_pods(render(write_values(tmp_path, every_component(extras, "text"))))
    assert len(specs) == 6
    for name, spec in specs.items():
        main, *sidecars = spec["containers"]
        assert [box["name"] for box in sidecars] == ["agent"], name
        delivery = [] if name == "gateway" else ["model-repository"]
        assert [box["name"] for box in spec["initContainers"]] == [*delivery, "wait"], name
        assert extras["extraVolumeMounts"][0] in main["volumeMounts"], name
        assert extras["extraVolumes"][0] in spec["volumes"], name


def gateway(docs: tuple[dict, ...]) -> dict:
    (found,) = [doc for doc in of_kind(docs, "Deployment") if component(doc) == "gateway"]
    return found


def test_new_api_keys_roll_the_gateway_and_new_routes_do_not():
    before = render(AUTH)
    keys = render(AUTH, "gateway.auth.keys[1].name=ci", "gateway.auth.keys[1].key=another-long-random-string")
    routes = render(AUTH, "gateway.routes.fashion_cnn.timeout_seconds=5")
    annotations = gateway(before)["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/api-keys" in annotations
    assert gateway(keys)["spec"]["template"] != gateway(before)["spec"]["template"], "the gateway reads keys at start"
    assert gateway(routes) == gateway(before), "the gateway reloads its routes live: no restart"
    assert of_kind(routes, "ConfigMap") != of_kind(before, "ConfigMap")


def test_the_gateways_load_balancer_publishes_no_metrics_port_yet_prometheus_finds_it():
    docs = render(PVC)
    (balancer,) = [doc for doc in of_kind(docs, "Service") if doc["spec"].get("type") == "LoadBalancer"]
    assert [port["name"] for port in balancer["spec"]["ports"]] == ["grpc", "http"]
    (monitor,) = of_kind(docs, "ServiceMonitor")
    gateway_pods = pod_labels(gateway(docs))
    scraped = [
        doc
        for doc in of_kind(docs, "Service")
        if selects(monitor["spec"]["selector"], doc["metadata"]["labels"])
        and selects(doc["spec"]["selector"], gateway_pods)
        and "metrics" in {port["name"] for port in doc["spec"]["ports"]}
    ]
    assert [doc["spec"].get("clusterIP") for doc in scraped] == ["None"]


def test_an_ingress_or_a_grpcroute_reaches_the_gateways_grpc_port():
    docs = render(PARENT)
    services = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Service")}
    (ingress,) = of_kind(docs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert rule["host"] == "maas.example.com" and ingress["spec"]["ingressClassName"] == "nginx"
    assert backend["port"]["name"] in {port["name"] for port in services[backend["name"]]["spec"]["ports"]}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    docs = render(GPU_POOL)
    services = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Service")}
    (route,) = of_kind(docs, "GRPCRoute")
    (rule,) = route["spec"]["rules"]
    (ref,) = rule["backendRefs"]
    assert ref["port"] in {port["port"] for port in services[ref["name"]]["spec"]["ports"]}
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert not of_kind(render(), "Ingress") and not of_kind(render(), "GRPCRoute")


def test_a_model_version_rollout_changes_only_the_routing(tmp_path: Path):
    steps = {
        "pin": {"fashion_cnn": {"version": 1}},
        "split": {
            "fashion_cnn": {
                "split": [
                    {"target": "vision", "version": 1, "weight": 90},
                    {"target": "vision", "version": 2, "weight": 10},
                ]
            }
        },
        "promote": {"fashion_cnn": {"version": 2}},
    }
    rendered = {}
    for step, routes in steps.items():
        (tmp_path / step).mkdir()
        docs = render(write_values(tmp_path / step, {"gateway": {"routes": routes}}))
        (configmap,) = of_kind(docs, "ConfigMap")
        rendered[step] = (gateway(docs), parse_routing(configmap["data"]["routing.yaml"], step).models["fashion_cnn"])
    assert rendered["pin"][1].target == "vision" and rendered["pin"][1].version == "1"
    assert [(b.target, b.version, b.weight) for b in rendered["split"][1].split] == [
        ("vision", "1", 90),
        ("vision", "2", 10),
    ]
    assert rendered["promote"][1].version == "2"
    assert rendered["pin"][0] == rendered["split"][0] == rendered["promote"][0], "each step is a live reload"
    (tmp_path / "typo").mkdir()
    typo = {"gateway": {"routes": {"fashion_cnn": {"split": [{"target": "vison", "version": 1, "weight": 1}]}}}}
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(write_values(tmp_path / "typo", typo))
    assert "gateway.routes.fashion_cnn.split: target vison is not an enabled service" in failed.value.stderr
