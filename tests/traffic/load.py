"""Closed-loop load through the gateway for traffic tests: every call's send time, answering
version and status."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.codec import Tensor, encode_inputs

MODEL = "pool"


def infer_request(version: str = "", delay_ms: int = 0) -> pb.ModelInferRequest:
    """A ModelInfer of the replicas' echo model (`pool`), one INT64 value."""
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version)
    encode_inputs(request, [Tensor("X", "INT64", np.array([7], dtype=np.int64))])
    if delay_ms:
        request.parameters["delay_ms"].int64_param = delay_ms
    return request


@dataclass(frozen=True)
class Outcome:
    """One call: when it was sent (monotonic), which version answered ("" if none), its status."""

    sent: float
    version: str
    code: str
    details: str = ""


async def closed_loop(
    stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub,
    concurrency: int,
    *,
    calls: int | None = None,
    seconds: float | None = None,
    delay_ms: int = 0,
) -> list[Outcome]:
    """`concurrency` callers, each sending its next call when the last is answered, for `calls`
    calls in all or for `seconds`."""
    outcomes: list[Outcome] = []
    stop = time.monotonic() + (seconds or 3600)
    request = infer_request(delay_ms=delay_ms)

    async def caller() -> None:
        while time.monotonic() < stop and (calls is None or len(outcomes) < calls):
            sent = time.monotonic()
            try:
                response = await stub.ModelInfer(request, timeout=10)
                outcomes.append(Outcome(sent, response.model_version, "OK"))
            except grpc.aio.AioRpcError as exc:
                outcomes.append(Outcome(sent, "", exc.code().name, exc.details() or ""))

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return outcomes[:calls] if calls is not None else outcomes


def codes(outcomes: list[Outcome]) -> Counter:
    """How many calls ended with each status."""
    return Counter(o.code for o in outcomes)


class ConfigMapDir:
    """A directory laid out as kubelet mounts a ConfigMap: `routing.yaml -> ..data/routing.yaml`,
    `..data -> ..<generation>`, each update a new generation directory and an atomic symlink swap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        self.path = root / "routing.yaml"

    def write(self, text: str) -> None:
        """Publish `text` as the file's next version, as kubelet does."""
        self.generation += 1
        version = self.root / f"..{self.generation}"
        version.mkdir()
        (version / "routing.yaml").write_text(text)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to(Path("..data") / "routing.yaml")
