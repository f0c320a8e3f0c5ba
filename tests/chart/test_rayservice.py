"""The `rayservice` runtime: a KubeRay RayService whose Serve config is `maas serve-config`'s, limited to
the services moved to Ray, with their autoscaling, GPU and batching values applied."""

from __future__ import annotations

import yaml

from tests.chart.conftest import CI_VALUES, of_kind, render

RAYSERVICE = next(path for path in CI_VALUES if path.name == "rayservice-values.yaml")


def test_the_rayservice_carries_the_generated_serve_config_with_the_values_applied():
    from ray.serve.schema import ServeDeploySchema

    docs = render(RAYSERVICE)
    (rayservice,) = of_kind(docs, "RayService")
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    apps = {app["name"]: app["deployments"][0] for app in config["applications"]}
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
    service = rayservice["spec"]["serveService"]
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == {"grpc": 9000, "serve": 8000}


def test_ray_pods_get_the_settings_the_repository_shm_and_the_locked_down_context():
    (rayservice,) = of_kind(render(RAYSERVICE), "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 4)
    for group in (cluster["headGroupSpec"], workers):
        spec = group["template"]["spec"]
        (box,) = spec["containers"]
        env = {item["name"]: item["value"] for item in box["env"]}
        assert env["MAAS_TRANSFORMER_MAX_BATCH_SIZE"] == "64" and env["RAY_USAGE_STATS_ENABLED"] == "0"
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
    assert not of_kind(render(), "RayService")
