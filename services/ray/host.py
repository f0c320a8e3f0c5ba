"""`maas run ray`: every model service on Ray Serve, each behind its maas front on its usual port.

Starts (or joins) Ray, deploys one Serve application per service, starts each service's front, prints
`READY <service> <host>:<port>` per service, and on SIGTERM or Ctrl-C drains the fronts, then shuts
Serve and Ray down by handle.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from services.catalog import model_services, service
from services.common.devices import DeviceError
from services.common.logs import configure_logging
from services.common.repository import version_dirs
from services.common.server import host_port
from services.common.settings import RaySettings, ServiceSettings
from services.common.spec import ServiceSpec
from services.ray import cluster
from services.ray.front import RayFront
from services.ray.replica import replica_device

log = logging.getLogger(__name__)


def available_services() -> list[str]:
    """The model services whose models are all in the repository (every one `maas up` would start)."""
    return [
        spec.name
        for spec in model_services()
        if all(version_dirs(spec.read_settings().model_repository, model) for model in spec.model_names)
    ]


async def run_ray(apps: list[tuple[ServiceSpec, ServiceSettings]] | None = None) -> None:
    """Host services on Ray until signalled.

    Args:
        apps: each service's spec and settings; default: the services `MAAS_RAY_SERVICES` names, else
            every model service whose models exist, with the settings their environment gives.

    Raises:
        SystemExit: a model service's `device` needs a GPU its replicas do not reserve, or Ray or an
            application failed to start (the reason is logged).
    """
    ray = RaySettings()
    if apps is None:
        apps = [(service(name), service(name).read_settings()) for name in ray.services or available_services()]
    configure_logging(apps[0][1].log_format if apps else "text", "INFO")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handle_signals() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

    handle_signals()
    fronts: list[RayFront] = []
    try:
        for spec, service_settings in apps:
            if spec.torch:
                try:
                    replica_device(service_settings.device, ray.replica_num_gpus > 0)
                except DeviceError as exc:
                    raise DeviceError(f"{spec.name}: {exc}") from None
        await asyncio.to_thread(cluster.start, ray)
        # ray.init installs Ray's own failure handler for SIGTERM, which aborts the process before
        # anything is drained or stopped; ours again.
        handle_signals()
        handles = await asyncio.to_thread(cluster.deploy, apps, ray)
        for spec, service_settings in apps:
            front = RayFront(spec, service_settings, handles[spec.name], ray)
            await front.start()
            fronts.append(front)
            sys.stdout.write(f"READY {spec.name} {host_port(front.settings.host, front.port)}\n")
            sys.stdout.flush()
        if ray.native_proxy:
            log.info("Serve's gRPC proxy on 127.0.0.1:%d (metadata `application: <service>`)", ray.grpc_port)
        await stop.wait()
    except (RuntimeError, OSError, DeviceError) as exc:
        log.error("ray hosting failed to start: %s", exc)
        raise SystemExit(1) from None
    finally:
        for front in fronts:
            await front.stop()
        await asyncio.to_thread(cluster.stop)
