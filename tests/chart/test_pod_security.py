"""Every pod the release runs meets the `restricted` Pod Security Standard (tests/chart/pod_security.py):
the chart's own pods, and the Ray pods as KubeRay builds them (tests/chart/kuberay.py), with the
autoscaler container it injects into the head and the init container it adds to each worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart import kuberay
from tests.chart.conftest import CI_VALUES, of_kind, pod_spec, render, values_id, workloads
from tests.chart.pod_security import restricted_violations


def pods(docs: tuple[dict, ...]) -> dict[str, tuple[dict, dict]]:
    """Pod name -> (pod spec, pod annotations) of every pod the release runs."""
    found = {}
    for doc, spec in workloads(docs):
        metadata = doc["spec"]["template"]["metadata"] if doc["kind"] == "Deployment" else doc["metadata"]
        found[doc["metadata"]["name"]] = (spec, metadata.get("annotations", {}))
    for rayservice in of_kind(docs, "RayService"):
        found["ray head"] = (kuberay.head_pod(rayservice), {})
        for index, group in enumerate(rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]):
            found[f"ray worker {group['groupName']}"] = (kuberay.worker_pod(rayservice, index), {})
    return found


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=values_id)
def test_every_pod_meets_the_restricted_pod_security_standard(values: Path | None):
    docs = render(values)
    found = pods(docs)
    assert len(found) >= len(of_kind(docs, "Deployment")) + 1
    assert {name: restricted_violations(spec, annotations) for name, (spec, annotations) in found.items()} == {
        name: [] for name in found
    }


def test_kuberays_injected_containers_are_checked():
    rayservice = next(path for path in CI_VALUES if path.name == "rayservice-values.yaml")
    found = pods(render(rayservice))
    head, _ = found["ray head"]
    worker, _ = found["ray worker gpu-workers"]
    assert [box["name"] for box in head["containers"]] == ["ray-head", "autoscaler"]
    assert [box["name"] for box in worker["initContainers"]] == ["model-repository", "wait-gcs-ready"]
    bare = dict(head, containers=[*head["containers"][:1], {**head["containers"][1], "securityContext": None}])
    assert restricted_violations(bare) == [
        "autoscaler must set securityContext.allowPrivilegeEscalation=false",
        'autoscaler must set securityContext.capabilities.drop=["ALL"]',
    ]


def test_the_checks_refuse_what_the_standard_forbids():
    pod = pod_spec(of_kind(render(), "Deployment")[0])
    assert restricted_violations(pod) == []
    loose = {
        **pod,
        "hostNetwork": True,
        "securityContext": {**pod["securityContext"], "runAsNonRoot": False},
        "volumes": [*pod["volumes"], {"name": "host", "hostPath": {"path": "/"}}],
        "containers": [{**pod["containers"][0], "securityContext": {"privileged": True}}],
    }
    assert restricted_violations(loose) == [
        "host namespaces: hostNetwork=true",
        "hostPath volume host",
        f"{pod['containers'][0]['name']}: privileged",
        "volume host has a restricted type",
        "pod sets runAsNonRoot=false",
        f"{pod['containers'][0]['name']} must set securityContext.allowPrivilegeEscalation=false",
        f'{pod["containers"][0]["name"]} must set securityContext.capabilities.drop=["ALL"]',
        f"{pod['containers'][0]['name']}: pod or container must set securityContext.runAsNonRoot=true",
    ]
