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

from services.common.devices import DeviceError
from services.common.logs import configure_logging
from services.common.server import host_port
from services.common.settings import BatchingSettings, RaySettings
from services.ray import cluster
from services.ray.catalog import SERVICES
from services.ray.front import RayFront
from services.ray.replica import replica_device

log = logging.getLogger(__name__)


MODELS = {
    "tokenizer": ["tokenizer"],
    "vision": ["fashion_cnn"],
    "text": ["review_lstm"],
    "transformer": ["minilm_embed", "minilm_sentiment"],
}


def available_services() -> list[str]:
    """The hosted services whose models are in the repository (every one `maas up` would start)."""
    from services.common.repository import version_dirs

    names = []
    for name, spec in SERVICES.items():
        settings = spec.settings()
        if all(version_dirs(settings.model_repository, model) for model in MODELS[name]):
            names.append(name)
    return names


async def run_ray(services: list[str] | None = None) -> None:
    """Host `services` (default: every one whose models exist) on Ray until signalled.

    Raises:
        SystemExit: a model service's `device` needs a GPU its replicas do not reserve, or Ray or an
            application failed to start (the reason is logged).
    """
    ray = RaySettings()
    names = services or ray.services or available_services()
    settings = {name: SERVICES[name].settings() for name in names}
    configure_logging(next(iter(settings.values())).log_format if settings else "text", "INFO")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handle_signals() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

    handle_signals()
    fronts: list[RayFront] = []
    try:
        for name, service_settings in settings.items():
            if SERVICES[name].uses_torch and isinstance(service_settings, BatchingSettings):
                try:
                    replica_device(service_settings.device, ray.replica_num_gpus > 0)
                except DeviceError as exc:
                    raise DeviceError(f"{name}: {exc}") from None
        await asyncio.to_thread(cluster.start, ray)
        # ray.init installs Ray's own failure handler for SIGTERM, which aborts the process before
        # anything is drained or stopped; ours again.
        handle_signals()
        handles = await asyncio.to_thread(cluster.deploy, settings, ray)
        for name in names:
            front = RayFront(SERVICES[name], settings[name], handles[name], ray)
            await front.start()
            fronts.append(front)
            sys.stdout.write(f"READY {name} {host_port(front.settings.host, front.port)}\n")
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
