"""Roles per API key on a real server: a key without `admin` may infer but not load or unload models."""

from __future__ import annotations

import grpc
import pytest

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.auth import ApiKeys, KeyEntry
from services.common.echo import echo_model
from services.common.server import GrpcServer
from services.common.settings import EchoSettings
from services.common.versions import ModelRegistry
from tests.conftest import started

APP, OPS = "app-key-of-enough-length", "ops-key-of-enough-length"


async def test_only_an_admin_key_unloads_and_loads_a_model():
    auth = ApiKeys([KeyEntry(name="app", key=APP), KeyEntry(name="ops", key=OPS, roles=("infer", "admin"))])
    server = GrpcServer("echo-server", EchoSettings(port=0, metrics_port=0), ModelRegistry([echo_model()]), auth=auth)
    async with started(server), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        app, ops = ((("authorization", f"Bearer {key}"),) for key in (APP, OPS))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="echo"), metadata=app)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details() == (
            "API key 'app' may not call RepositoryModelUnload: it needs the admin role (the key has infer)"
        )
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="echo"), metadata=app)).ready
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="echo"), metadata=ops)
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="echo"), metadata=app)).ready
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="echo"), metadata=ops)
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="echo"), metadata=app)).ready
