"""A version unloaded from a real `maas run` process, which froze its start-up objects (`gc.freeze`), gives
its memory back: what it left in reference cycles is collected, not kept frozen for the process's life."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.reliability.harness import free_port
from tests.integration.processes import maas_process


def full_collections_collected(metrics_port: int) -> float:
    """Objects the collector's full (generation 2) collections freed so far, from the process's /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return float(re.search(r'^python_gc_objects_collected_total\{generation="2"\} (\S+)$', text, re.M).group(1))


def mapped(pid: int, path: str) -> bool:
    """Whether the process has the file at `path` mapped into memory (a torch version maps its safetensors)."""
    return any(line.endswith(f" {path}") for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def weights_of(repository: Path, model: str, version: str) -> str:
    """A torch version's weights file, as the kernel names it in a process's maps."""
    return str((repository / model / version / "model.safetensors").resolve())


async def test_unloading_a_version_loaded_at_start_up_releases_its_weights(model_repository: Path):
    weights = weights_of(model_repository, "review_lstm", "1")
    metrics_port = free_port()
    env = {"MAAS_MODEL_REPOSITORY": str(model_repository), "MAAS_TEXT_METRICS_PORT": str(metrics_port)}
    async with (
        maas_process("run", "text", "--port", "0", ready="text", env=env) as service,
        grpc.aio.insecure_channel(service.address) as channel,
    ):
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        pid = service.process.pid
        assert mapped(pid, weights)
        collected = full_collections_collected(metrics_port)
        await v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="review_lstm"))
        assert not (await v2.ModelReady(pb.ModelReadyRequest(name="review_lstm", version="1"))).ready
        assert not mapped(pid, weights), "the unloaded version's weights stay mapped"
        assert full_collections_collected(metrics_port) > collected, "no full collection freed anything on unload"
        await v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="review_lstm"))
        assert (await v2.ModelReady(pb.ModelReadyRequest(name="review_lstm", version="1"))).ready
        assert mapped(pid, weights)
