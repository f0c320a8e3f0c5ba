"""The `rayservice` runtime: a KubeRay RayService whose Serve config is `maas serve-config`'s, limited to
the services moved to Ray, with their autoscaling, GPU and batching values applied; and what KubeRay
(the rules in tests/chart/kuberay.py) and Kubernetes make of it."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from services.catalog import service
from services.gateway.routing import parse_routing
from tests.chart import kuberay
from tests.chart.conftest import CHART, CI_VALUES, of_kind, rayservice_of, render, write_values
from tests.conftest import REPO_ROOT

RAYSERVICE = next(path for path in CI_VALUES if path.name == "rayservice-values.yaml")


def serve_config(rayservice: dict) -> dict:
    """The RayService's serveConfigV2, parsed."""
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def applications(rayservice: dict) -> dict[str, dict]:
    """Serve application name -> its config."""
    return {app["name"]: app for app in serve_config(rayservice)["applications"]}


def test_the_rayservice_carries_the_generated_serve_config_with_the_values_applied():
    from ray.serve.schema import ServeDeploySchema

    rayservice = rayservice_of(render(RAYSERVICE))
    config = serve_config(rayservice)
    ServeDeploySchema.model_validate(config)
    apps = {name: app["deployments"][0] for name, app in applications(rayservice).items()}
    assert set(apps) == {"vision", "text", "transformer"}
    assert {name: d["ray_actor_options"]["num_gpus"] for name, d in apps.items()} == {
        "vision": 0.25,
        "text": 0.25,
        "transformer": 0.5,
    }
    transformer = apps["transformer"]
    assert (transformer["autoscaling_config"]["min_replicas"], transformer["autoscaling_config"]["max_replicas"]) == (
        1,
        6,
    )
    assert transformer["user_config"]["batching"]["max_batch_size"] == 64
    assert config["grpc_options"]["port"] == 9000


def test_ray_pods_get_the_repository_shm_and_the_locked_down_context():
    cluster = rayservice_of(render(RAYSERVICE))["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 5)
    for group in (cluster["headGroupSpec"], workers):
        spec = group["template"]["spec"]
        (box,) = spec["containers"]
        env = {item["name"]: item["value"] for item in box["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["MAAS_MODEL_REPOSITORY"]
        assert "command" not in box, "KubeRay supplies `ray start`"
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
        assert {mount["mountPath"] for mount in box["volumeMounts"]} == {
            "/dev/shm",
            "/tmp",
            "/opt/maas/model_repository",
        }
        (init,) = spec["initContainers"]
        assert init["args"][:2] == ["models", "install"] and init["image"].endswith("/maas/model-repository:0.1.0")
        assert box["securityContext"]["readOnlyRootFilesystem"] and spec["securityContext"]["runAsNonRoot"]
    worker = workers["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_without_rayservice_runtimes_there_is_no_rayservice():
    docs = render()
    assert not of_kind(docs, "RayService")
    assert [account["metadata"]["name"] for account in of_kind(docs, "ServiceAccount")] == ["rel-maas"]


def test_kuberays_serve_service_has_the_port_the_gateway_dials():
    docs = render(RAYSERVICE)
    rayservice = rayservice_of(docs)
    service = kuberay.serve_service(rayservice)
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_ports = {port["name"]: port["containerPort"] for port in head["ports"]}
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    (configmap,) = of_kind(docs, "ConfigMap")
    routing = parse_routing(configmap["data"]["routing.yaml"], "the routing ConfigMap")
    dialled = {routing.targets[name].address for name in applications(rayservice)}
    assert len(dialled) == 1
    host, port = dialled.pop().removeprefix("dns:///").rsplit(":", 1)
    assert host.split(".")[0] == service["metadata"]["name"]
    matching = [p for p in ports.values() if p["port"] == int(port)]
    assert len(matching) == 1, f"KubeRay's serve Service has no port {port}: {sorted(ports)}"
    (serving,) = matching
    assert serving["targetPort"] in (head_ports[serving["name"]], serving["name"]), "the port reaches the proxy"
    assert head_ports[serving["name"]] == serve_config(rayservice)["grpc_options"]["port"]
    assert serving["appProtocol"] == "kubernetes.io/h2c"
    assert service["spec"]["clusterIP"] == "None", "headless: round_robin reaches the proxy on every Ray pod"


def test_the_chart_states_the_kuberay_version_its_rules_follow():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["maas/kuberay-version"] == f">={kuberay.KUBERAY_VERSION}"
    assert f"KubeRay ≥ {kuberay.KUBERAY_VERSION}" in (REPO_ROOT / "docs" / "kubernetes.md").read_text()


def test_the_autoscaler_reads_the_head_accounts_token_and_no_other_pod_gets_one():
    docs = render(RAYSERVICE)
    rayservice = rayservice_of(docs)
    accounts = {account["metadata"]["name"]: account for account in of_kind(docs, "ServiceAccount")}
    head = kuberay.head_pod(rayservice)
    assert not kuberay.kuberay_creates_head_service_account(rayservice), "KubeRay checks that the named account exists"
    assert "autoscaler" in kuberay.token_mounted_in(head, accounts)
    shared = {doc["spec"]["template"]["spec"]["serviceAccountName"] for doc in of_kind(docs, "Deployment")}
    assert kuberay.head_service_account(rayservice) not in shared, "KubeRay's Role is bound to the head's account"
    pods = [kuberay.worker_pod(rayservice)] + [doc["spec"]["template"]["spec"] for doc in of_kind(docs, "Deployment")]
    pods += [doc["spec"] for doc in of_kind(docs, "Pod")]
    assert all(kuberay.token_mounted_in(pod, accounts) == set() for pod in pods)
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding"), "KubeRay creates them"


def test_the_replicas_gpus_at_their_maxima_must_fit_the_worker_group(tmp_path: Path):
    values = {
        "vision": {"runtime": "rayservice", "gpu": 0.5},
        "transformer": {
            "runtime": "rayservice",
            "gpu": 1,
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 70},
        },
        "ray": {"workers": {"maxReplicas": 5}},
    }
    fits = rayservice_of(render(write_values(tmp_path, values)))
    assert {
        name: app["deployments"][0]["ray_actor_options"]["num_gpus"] for name, app in applications(fits).items()
    } == {
        "vision": 0.5,
        "transformer": 1,
    }
    values["ray"]["workers"]["maxReplicas"] = 4
    (tmp_path / "over").mkdir()
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(write_values(tmp_path / "over", values))
    assert (
        "the Serve replicas need 5 GPUs (vision 4 x 0.5, transformer 3 x 1), but the worker group has 4 "
        "(ray.workers.maxReplicas 4 x nvidia.com/gpu 1)" in failed.value.stderr
    ), failed.value.stderr


def test_changing_a_services_settings_leaves_the_ray_cluster_alone():
    before = rayservice_of(render(RAYSERVICE))
    after = rayservice_of(
        render(RAYSERVICE, "transformer.settings.max_batch_size=16", "transformer.settings.max_texts=64")
    )
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"], "KubeRay would replace the cluster"
    transformer = applications(after)["transformer"]
    assert transformer["deployments"][0]["user_config"]["batching"]["max_batch_size"] == 16, "applied to live replicas"
    assert transformer["args"]["settings"] == {"max_texts": 64, "device": "cuda"}, "Serve redeploys its replicas"
    assert "max_texts" not in applications(before)["transformer"]["args"]["settings"]
    settings = service("transformer").read_settings(**transformer["args"]["settings"])
    assert (settings.max_texts, settings.device) == (64, "cuda")


def test_the_upgrade_strategy_is_a_value():
    assert rayservice_of(render(RAYSERVICE))["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    assert rayservice_of(render(RAYSERVICE, "ray.upgradeStrategy=None"))["spec"]["upgradeStrategy"] == {"type": "None"}
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(RAYSERVICE, "ray.upgradeStrategy=NewClusterWithIncrementalUpgrade")
    assert "upgradeStrategy" in failed.value.stderr


def test_the_autoscalers_look_back_spans_a_load_report():
    from ray.serve.schema import ServeDeploySchema

    config = serve_config(rayservice_of(render(RAYSERVICE)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        autoscaling = app["deployments"][0]["autoscaling_config"]
        assert autoscaling["look_back_period_s"] > autoscaling.get("metrics_interval_s", 10.0)


def test_a_latency_target_reaches_live_replicas_and_deployments_alike():
    ray = applications(rayservice_of(render(RAYSERVICE, "vision.settings.max_latency_ms=10")))["vision"]
    assert ray["deployments"][0]["user_config"]["batching"]["max_latency_ms"] == 10, "applied to live replicas"
    assert "max_latency_ms" not in ray["args"].get("settings", {})
    deployments = of_kind(render(None, "vision.settings.max_latency_ms=10"), "Deployment")
    vision = next(doc for doc in deployments if doc["metadata"]["name"].endswith("vision"))
    env = {e["name"]: e.get("value") for e in vision["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MAAS_VISION_MAX_LATENCY_MS"] == "10"
    assert (
        service("vision")
        .read_settings(max_latency_ms=float(env["MAAS_VISION_MAX_LATENCY_MS"]))
        .batching(pad={})
        .max_latency_ms
        == 10
    )
