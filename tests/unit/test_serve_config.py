"""The committed Serve config (KubeRay serveConfigV2) is what `maas serve-config` generates, and valid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from services.ray.serve_config import SERVE_CONFIG_FILE
from tests.conftest import PYTHON, REPO_ROOT


def test_committed_serve_config_is_fresh(tmp_path: Path):
    fresh = tmp_path / "serve-config.yaml"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAAS_")}
    subprocess.run(
        [PYTHON, "-m", "services.cli.main", "serve-config", "--output", str(fresh)],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert SERVE_CONFIG_FILE.read_text() == fresh.read_text(), (
        "helm/maas/files/serve-config.yaml is stale: run `maas serve-config` (with no MAAS_* settings set)"
    )


def test_serve_config_is_a_valid_serve_deploy_config_for_every_service():
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(SERVE_CONFIG_FILE.read_text())
    config = ServeDeploySchema.model_validate(data)
    assert [app.name for app in config.applications] == ["tokenizer", "vision", "text", "transformer"]
    for app in data["applications"]:
        (deployment,) = app["deployments"]
        assert deployment["num_replicas"] == "auto" and deployment["autoscaling_config"]["max_replicas"] >= 2
        policy = deployment["autoscaling_config"]["policy"]
        assert policy["policy_function"] == "services.ray.autoscaling:OngoingItemsPolicy"
        assert policy["policy_kwargs"]["target_items_per_replica"] > 0
        assert set(deployment["ray_actor_options"]) == {"num_cpus", "num_gpus"}
        assert "versions" in deployment["user_config"]
    assert config.logging_config.enable_access_log is False
