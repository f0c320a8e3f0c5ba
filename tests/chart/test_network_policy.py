"""The NetworkPolicies admit exactly the listed peers: evaluated with Kubernetes' ingress semantics over the
rendered policies, for every pair of (source pod, destination pod, port)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chart.conftest import (
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    component,
    container,
    of_kind,
    pod_labels,
    render,
    values_id,
)
from tests.chart.test_manifests import selects


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict = field(hash=False)
    ports: dict = field(default_factory=dict, hash=False)


def _namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


def _peer_admits(peer: dict, source: Pod, policy_namespace: str) -> bool:
    namespace_ok = (
        selects(peer["namespaceSelector"], _namespace_labels(source.namespace))
        if "namespaceSelector" in peer
        else source.namespace == policy_namespace
    )
    pod_ok = selects(peer["podSelector"], source.labels) if "podSelector" in peer else True
    return namespace_ok and pod_ok


def _port_matches(rule_port: dict, destination: Pod, port_name: str) -> bool:
    wanted = rule_port["port"]
    return wanted == port_name if isinstance(wanted, str) else wanted == destination.ports[port_name]


def admitted(policies: list[dict], source: Pod, destination: Pod, port_name: str) -> bool:
    """Whether Kubernetes lets `source` reach `destination`'s named port under `policies`."""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == destination.namespace
        and selects(p["spec"]["podSelector"], destination.labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports_ok = not rule.get("ports") or any(_port_matches(p, destination, port_name) for p in rule["ports"])
            peers = rule.get("from")
            sources_ok = not peers or any(_peer_admits(peer, source, policy["metadata"]["namespace"]) for peer in peers)
            if ports_ok and sources_ok:
                return True
    return False


def _pods(docs: tuple[dict, ...]) -> dict[str, Pod]:
    pods = {}
    for doc in of_kind(docs, "Deployment"):
        ports = {port["name"]: port["containerPort"] for port in container(doc)["ports"]}
        pods[component(doc)] = Pod(component(doc), NAMESPACE, pod_labels(doc), ports)
    for rayservice in of_kind(docs, "RayService"):
        cluster = rayservice["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["template"]
        ports = {port["name"]: port["containerPort"] for port in head["spec"]["containers"][0]["ports"]}
        pods["ray head"] = Pod("ray head", NAMESPACE, head["metadata"]["labels"], ports)
        worker = cluster["workerGroupSpecs"][0]["template"]
        pods["ray worker"] = Pod("ray worker", NAMESPACE, worker["metadata"]["labels"])
    pods["kuberay operator"] = Pod("operator", "kuberay", {"app.kubernetes.io/name": "kuberay-operator"})
    (test,) = of_kind(docs, "Pod")
    pods["helm test"] = Pod("helm test", NAMESPACE, pod_labels(test))
    pods["prometheus"] = Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    pods["other pod, same namespace"] = Pod("other", NAMESPACE, {"app": "other"})
    pods["client namespace"] = Pod("client", "clients", {"app": "client"})
    pods["another release"] = Pod(
        "other release", NAMESPACE, {**pods["gateway"].labels, "app.kubernetes.io/instance": f"{RELEASE}-2"}
    )
    return pods


MODEL_SERVICES = ("tokenizer", "vision", "text", "transformer")


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=values_id)
def test_network_policies_admit_exactly_the_listed_peers(values: Path | None):
    docs = render(values)
    policies = of_kind(docs, "NetworkPolicy")
    pods = _pods(docs)
    gateway_from = "client namespace" if values and values.name == "pvc-values.yaml" else None
    deployed = [name for name in ("gateway", *MODEL_SERVICES) if name in pods]
    for destination in deployed:
        for port in ("grpc", "metrics", "http") if destination == "gateway" else ("grpc", "metrics"):
            allowed = {name for name, source in pods.items() if admitted(policies, source, pods[destination], port)}
            if port == "metrics":
                expected = {"prometheus"}
            elif destination == "gateway":
                expected = {gateway_from} if gateway_from else set(pods)
            else:
                expected = {"gateway", "helm test"}
            assert allowed == expected, (destination, port)


def test_ray_pods_admit_each_other_the_gateway_on_grpc_the_operator_and_the_scraper():
    rayservice = next(path for path in CI_VALUES if path.name == "rayservice-values.yaml")
    docs = render(rayservice)
    policies, pods = of_kind(docs, "NetworkPolicy"), _pods(docs)
    head = pods["ray head"]
    expected = {
        "serve-grpc": {"gateway", "helm test", "ray head", "ray worker"},
        "dashboard": {"kuberay operator", "ray head", "ray worker"},
        "serve": {"kuberay operator", "ray head", "ray worker"},
        "metrics": {"prometheus", "ray head", "ray worker"},
        "gcs-server": {"ray head", "ray worker"},
        "client": {"ray head", "ray worker"},
    }
    for port, allowed in expected.items():
        assert {name for name, source in pods.items() if admitted(policies, source, head, port)} == allowed, port
