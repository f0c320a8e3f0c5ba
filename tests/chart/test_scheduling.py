"""Where pods run and how they roll: GPUs per pod, the rollout strategy, and the scheduling keys every
component (each service, the Ray head and workers) takes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.chart.conftest import (
    CI_VALUES,
    SERVICES,
    component,
    component_pods,
    every_component,
    of_kind,
    render,
    write_values,
)


def test_a_fractional_gpu_under_deployment_is_refused(tmp_path: Path):
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(write_values(tmp_path, {"vision": {"gpu": 0.5}}))
    assert "at '/vision/gpu': got number, want integer" in failed.value.stderr, failed.value.stderr


def test_the_rollout_strategy_is_a_value():
    gpu_pool = next(path for path in CI_VALUES if path.name == "gpu-deployment-values.yaml")
    strategies = {component(doc): doc["spec"]["strategy"] for doc in of_kind(render(gpu_pool), "Deployment")}
    surge_free = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert strategies["vision"] == strategies["transformer"] == surge_free, "a full GPU pool has no GPU for a surge pod"
    assert strategies["gateway"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_every_component_takes_the_scheduling_keys(tmp_path: Path):
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    keys = {
        "topologySpreadConstraints": spread,
        "priorityClassName": "maas-high",
        "runtimeClassName": "nvidia",
        "affinity": affinity,
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    }
    specs = component_pods(render(write_values(tmp_path, every_component(keys, "vision"))))
    assert set(specs) == {*SERVICES, "ray head", "ray workers"} - {"vision"}
    for name, spec in specs.items():
        owner = "ray" if name.startswith("ray") else name
        (constraint,) = spec["topologySpreadConstraints"]
        assert constraint == {
            **spread[0],
            "labelSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "maas",
                    "app.kubernetes.io/instance": "rel",
                    "app.kubernetes.io/component": owner,
                }
            },
        }, name
        assert {key: spec[key] for key in keys if key != "topologySpreadConstraints"} == {
            key: value for key, value in keys.items() if key != "topologySpreadConstraints"
        }, name
