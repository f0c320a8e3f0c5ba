"""Serve applications: one per service, an autoscaling deployment of its replica class.

`build_app` is what `maas run ray` and the tests deploy; `app_builder` is the `import_path` target
of the Serve config (`maas serve-config`, KubeRay's serveConfigV2), which passes its `args`.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from services.catalog import service
from services.common.settings import ModelServiceSettings, RaySettings, ServiceSettings
from services.common.spec import ServiceSpec
from services.ray.autoscaling import OngoingItemsPolicy
from services.ray.replica import replica_class


def deployment_options(spec: ServiceSpec, ray: RaySettings) -> dict[str, Any]:
    """The Serve deployment options of a service's replicas, from the ray settings.

    Replicas autoscale on the requests they are working on (`services.ray.autoscaling`), not on
    Serve's count of handle calls, since one call from the front carries many requests.

    Args:
        spec: the service's spec.
        ray: the ray hosting's settings.

    Returns:
        Options for `Deployment.options` (also the deployment's entry in a Serve config).
    """
    gpus = ray.replica_num_gpus if spec.torch else 0.0
    return {
        "num_replicas": "auto",
        "autoscaling_config": {
            "min_replicas": ray.min_replicas,
            "initial_replicas": ray.min_replicas,
            "max_replicas": max(ray.max_replicas, ray.min_replicas),
            "policy": {
                "policy_function": f"{OngoingItemsPolicy.__module__}:{OngoingItemsPolicy.__name__}",
                "policy_kwargs": {"target_items_per_replica": ray.target_ongoing_items},
            },
            "upscale_delay_s": ray.upscale_delay_s,
            "downscale_delay_s": ray.downscale_delay_s,
            # Deprecated in Serve's schema (it warns), but Ray 2.60 still reads the replicas' report interval
            # only from here; the environment variables named as its successors are not read yet.
            "metrics_interval_s": ray.metrics_interval_s,
            "look_back_period_s": ray.look_back_period_s,
        },
        "max_ongoing_requests": ray.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": ray.replica_num_cpus, "num_gpus": gpus},
        "health_check_period_s": ray.health_check_period_s,
        "health_check_timeout_s": ray.health_check_timeout_s,
        "graceful_shutdown_timeout_s": ray.graceful_shutdown_timeout_s,
    }


def user_config(settings: ServiceSettings, versions: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The `user_config` replicas start with: batching limits from the service's settings, and the
    versions to serve (default: each model's version policy).

    The queue delay is 0 unless the settings set it: the front keeps requests that arrive while its
    call to a replica is in flight for its next call, so a replica waiting for batch-mates would wait
    for requests that cannot come before its own batch returns.

    Args:
        settings: the service's settings.
        versions: model -> versions to serve.

    Returns:
        A `ReplicaConfig`-shaped dict.
    """
    config: dict[str, Any] = {"versions": dict(versions or {})}
    if isinstance(settings, ModelServiceSettings):
        config["batching"] = {
            "max_batch_size": settings.max_batch_size,
            "max_queue_delay_ms": settings.max_queue_delay_ms
            if "max_queue_delay_ms" in settings.model_fields_set
            else 0.0,
            "max_queue_size": settings.max_queue_size,
            "max_latency_ms": settings.max_latency_ms,
        }
    return config


def build_app(
    spec: ServiceSpec,
    settings: ServiceSettings | None = None,
    ray: RaySettings | None = None,
    versions: dict[str, list[str]] | None = None,
) -> Application:
    """A service's Serve application.

    Args:
        spec: the service's spec.
        settings: its settings; default: read from its environment variables.
        ray: the ray hosting's settings; default: read from `MAAS_RAY_*`.
        versions: model -> versions to serve (the initial `user_config`).

    Returns:
        The bound application, ready for `serve.run`.
    """
    settings = settings or spec.read_settings()
    ray = ray or RaySettings()
    deployment = serve.deployment(replica_class(spec), name=spec.name).options(
        **deployment_options(spec, ray), user_config=user_config(settings, versions)
    )
    return deployment.bind(spec, settings)


def app_builder(args: dict[str, Any]) -> Application:
    """The Serve config's application builder.

    Args:
        args: `service` (its name) and optionally `settings` (overrides of its settings).

    Returns:
        The service's application; the config's `deployments` entry overrides its options.
    """
    spec = service(args["service"])
    return build_app(spec, spec.read_settings(**args.get("settings", {})))
