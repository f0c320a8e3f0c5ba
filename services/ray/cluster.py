"""Start and stop Ray and Serve for the ray hosting, and deploy services onto it.

Set up for a shared machine: usage stats off, Serve's access log off, the object store capped, every
Ray process on loopback, and token auth off for a local cluster (Ray 2.60 turns it on by default; a
local cluster on loopback is reachable only from this machine). Ray is stopped by handle
(`serve.shutdown()`, `ray.shutdown()`), never by a broad kill.
"""

from __future__ import annotations

import logging

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from services.catalog import model_services
from services.common.settings import RaySettings, ServiceSettings
from services.common.spec import ServiceSpec
from services.ray import environment
from services.ray.apps import build_app
from services.ray.rpcs import V2_SERVICER_FUNCTION

log = logging.getLogger(__name__)


def grpc_servicer_functions() -> list[str]:
    """The servicer functions Serve's gRPC proxy registers: v2 and every typed API."""
    return [V2_SERVICER_FUNCTION, *(spec.typed.servicer_function for spec in model_services() if spec.typed)]


def serve_options(settings: RaySettings) -> dict:
    """Serve's cluster-wide options: proxies on loopback (or none), no access log."""
    return {
        "proxy_location": "HeadOnly" if settings.native_proxy else "Disabled",
        "http_options": {"host": "127.0.0.1", "port": settings.http_port},
        "grpc_options": {"port": settings.grpc_port, "grpc_servicer_functions": grpc_servicer_functions()},
        "logging_config": {"enable_access_log": False},
    }


def start(settings: RaySettings) -> None:
    """Start (or join) Ray and start Serve on it.

    Args:
        settings: the ray hosting's settings; an empty `address` starts a local Ray.
    """
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False)
    else:
        environment.set_defaults({**environment.LOCAL_RAY, **environment.TRANSPORT})
        ray.init(
            num_cpus=settings.num_cpus,
            num_gpus=settings.num_gpus,
            object_store_memory=settings.object_store_memory,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
    serve.start(**serve_options(settings))


def stop() -> None:
    """Shut Serve down, then disconnect from Ray (stopping a local Ray this process started)."""
    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def deploy(
    apps: list[tuple[ServiceSpec, ServiceSettings]],
    settings: RaySettings,
    versions: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, DeploymentHandle]:
    """Deploy services as Serve applications, all at once, and wait until every one is running.

    Args:
        apps: each service's spec and settings.
        settings: the ray hosting's settings.
        versions: service -> model -> versions to serve (default: the version policies).

    Returns:
        Service name -> the handle of its deployment.

    Raises:
        RuntimeError: an application failed to deploy (the message holds Serve's reason).
    """
    versions = versions or {}
    targets = [
        serve.RunTarget(
            build_app(spec, service_settings, settings, versions.get(spec.name)), spec.name, f"/{spec.name}"
        )
        for spec, service_settings in apps
    ]
    handles = serve.run_many(targets, wait_for_applications_running=True)
    return {spec.name: handle for (spec, _), handle in zip(apps, handles, strict=True)}
