"""TLS and mTLS on real servers over loopback, with certificates made here: who is refused, who gets
through, a rotated certificate served without a restart, the plaintext health-only port, and the
gateway dialling a model service that requires its client certificate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.auth import ApiKeys, KeyEntry
from services.common.echo import echo_model
from services.common.server import GrpcServer
from services.common.settings import EchoSettings
from services.common.tls import ClientTls, aio_channel
from services.common.versions import ModelRegistry, ModelVersions
from services.gateway.hosting import build_server
from services.gateway.spec import GatewaySettings
from tests.certs import Authority
from tests.conftest import PYTHON, REPO_ROOT, started
from tests.traffic.replica import replica_echo

CALL_TIMEOUT = 5
API_KEY = "a-test-key-of-enough-length"


def _server(settings: EchoSettings, model: ModelVersions | None = None) -> GrpcServer:
    return GrpcServer("echo-server", settings, ModelRegistry([model or echo_model()]))


async def _live(port: int, tls: ClientTls | None) -> grpc.StatusCode:
    """ServerLive over a fresh channel: OK, or the status that stopped it."""
    target = f"localhost:{port}"
    channel = aio_channel(target, tls) if tls else grpc.aio.insecure_channel(target)
    async with channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _mtls_replica(ca: Authority):
    """A replica serving `pool` that requires client certificates from `ca`, for the block."""
    leaf = ca.issue("pool", server=True)
    settings = EchoSettings(
        port=0, metrics_port=0, tls_cert_file=leaf.cert, tls_key_file=leaf.key, tls_client_ca_file=ca.ca_file
    )
    return started(_server(settings, replica_echo("pool", ["1"])))


def _routing_to(directory: Path, port: int, plaintext: bool = False) -> Path:
    routing = directory / "routing.yaml"
    extra = ", plaintext: true" if plaintext else ""
    routing.write_text(
        f"targets: {{pool: {{address: 'dns:///localhost:{port}'{extra}}}}}\nmodels: {{pool: {{target: pool}}}}\n"
    )
    return routing


def _pool_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="pool")
    request.inputs.add(name="X", datatype="INT64", shape=[1]).contents.int64_contents.append(7)
    return request


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Authority]:
    return {"ca": Authority(tmp_path, "ca"), "other": Authority(tmp_path, "other")}


async def test_tls_serves_only_clients_that_trust_its_ca(pki):
    leaf = pki["ca"].issue("server", server=True)
    settings = EchoSettings(port=0, metrics_port=0, tls_cert_file=leaf.cert, tls_key_file=leaf.key)
    async with started(_server(settings)) as server:
        assert await _live(server.port, ClientTls(pki["ca"].ca_file)) is grpc.StatusCode.OK
        assert await _live(server.port, ClientTls(pki["other"].ca_file)) is grpc.StatusCode.UNAVAILABLE
        assert await _live(server.port, None) is grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_callers_without_a_certificate_from_its_client_ca(pki):
    leaf = pki["ca"].issue("server", server=True)
    settings = EchoSettings(
        port=0, metrics_port=0, tls_cert_file=leaf.cert, tls_key_file=leaf.key, tls_client_ca_file=pki["ca"].ca_file
    )
    good = pki["ca"].issue("client", server=False)
    stranger = pki["other"].issue("client", server=False)
    async with started(_server(settings)) as server:
        ca = pki["ca"].ca_file
        assert await _live(server.port, ClientTls(ca, good.cert, good.key)) is grpc.StatusCode.OK
        assert await _live(server.port, ClientTls(ca)) is grpc.StatusCode.UNAVAILABLE
        assert await _live(server.port, ClientTls(ca, stranger.cert, stranger.key)) is grpc.StatusCode.UNAVAILABLE


async def test_a_rotated_certificate_is_served_without_a_restart(tmp_path: Path, pki):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    pki["ca"].issue("server", server=True, cert=cert, key=key)
    settings = EchoSettings(port=0, metrics_port=0, tls_cert_file=cert, tls_key_file=key)
    async with started(_server(settings)) as server:
        assert await _live(server.port, ClientTls(pki["ca"].ca_file)) is grpc.StatusCode.OK
        assert await _live(server.port, ClientTls(pki["other"].ca_file)) is grpc.StatusCode.UNAVAILABLE
        # As kubelet updates a Secret volume: the new files are written beside, then swapped in at once.
        staged = pki["other"].issue("server", server=True, cert=tmp_path / "new.crt", key=tmp_path / "new.key")
        os.replace(staged.key, key)
        os.replace(staged.cert, cert)
        assert await _live(server.port, ClientTls(pki["other"].ca_file)) is grpc.StatusCode.OK
        assert await _live(server.port, ClientTls(pki["ca"].ca_file)) is grpc.StatusCode.UNAVAILABLE


async def test_a_half_written_rotation_keeps_the_current_certificate(tmp_path: Path, pki):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    pki["ca"].issue("server", server=True, cert=cert, key=key)
    settings = EchoSettings(port=0, metrics_port=0, tls_cert_file=cert, tls_key_file=key)
    async with started(_server(settings)) as server:
        staged = pki["other"].issue("server", server=True, cert=tmp_path / "new.crt", key=tmp_path / "new.key")
        os.replace(staged.cert, cert)
        assert await _live(server.port, ClientTls(pki["ca"].ca_file)) is grpc.StatusCode.OK
        os.replace(staged.key, key)
        assert await _live(server.port, ClientTls(pki["other"].ca_file)) is grpc.StatusCode.OK


async def test_the_health_port_is_plaintext_and_serves_only_health(pki):
    leaf = pki["ca"].issue("server", server=True)
    settings = EchoSettings(
        port=0,
        metrics_port=0,
        health_port=0,
        tls_cert_file=leaf.cert,
        tls_key_file=leaf.key,
        tls_client_ca_file=pki["ca"].ca_file,
    )
    async with started(_server(settings)) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_a_bad_key_pair_stops_the_server_at_start_with_the_files_named(pki):
    one, two = pki["ca"].issue("one", server=True), pki["ca"].issue("two", server=True)
    settings = EchoSettings(port=0, metrics_port=0, tls_cert_file=one.cert, tls_key_file=two.key)
    server = _server(settings)
    with pytest.raises(ValueError, match="are not a certificate and its key"):
        await server.start()
    await server.stop()


async def test_the_gateway_dials_a_model_service_that_requires_its_client_certificate(tmp_path: Path, pki):
    ca = pki["ca"]
    gateway_leaf = ca.issue("gateway", server=False)
    async with _mtls_replica(ca) as replica:
        routing = _routing_to(tmp_path, replica.port)
        request = _pool_request()

        async def infer(settings: GatewaySettings) -> grpc.StatusCode:
            async with (
                started(build_server(settings)) as gateway,
                grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
            ):
                stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
                try:
                    reply = await stub.ModelInfer(request, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                assert reply.model_version == "1"
                return grpc.StatusCode.OK

        base = {"port": 0, "metrics_port": 0, "routing_file": routing, "max_reconnect_backoff_seconds": 0.1}
        with_cert = GatewaySettings(
            **base,
            downstream_tls_ca_file=ca.ca_file,
            downstream_tls_cert_file=gateway_leaf.cert,
            downstream_tls_key_file=gateway_leaf.key,
        )
        assert await infer(with_cert) is grpc.StatusCode.OK
        assert await infer(GatewaySettings(**base, downstream_tls_ca_file=ca.ca_file)) is grpc.StatusCode.UNAVAILABLE
        assert await infer(GatewaySettings(**base)) is grpc.StatusCode.UNAVAILABLE


async def test_the_gateway_dials_again_with_a_rotated_client_certificate(tmp_path: Path, pki):
    ca = pki["ca"]
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    pki["other"].issue("gateway", server=False, cert=cert, key=key)
    async with _mtls_replica(ca) as replica:
        routing = _routing_to(tmp_path, replica.port)
        settings = GatewaySettings(
            port=0,
            metrics_port=0,
            routing_file=routing,
            reload_interval_seconds=0.1,
            max_reconnect_backoff_seconds=0.1,
            downstream_tls_ca_file=ca.ca_file,
            downstream_tls_cert_file=cert,
            downstream_tls_key_file=key,
        )
        request = pb.ModelInferRequest(model_name="pool")
        request.inputs.add(name="X", datatype="INT64", shape=[1]).contents.int64_contents.append(7)
        async with (
            started(build_server(settings)) as gateway,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(request, timeout=CALL_TIMEOUT)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            staged = ca.issue("gateway", server=False, cert=tmp_path / "new.crt", key=tmp_path / "new.key")
            os.replace(staged.key, key)
            os.replace(staged.cert, cert)
            for _ in range(50):
                await asyncio.sleep(0.1)
                try:
                    reply = await stub.ModelInfer(request, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError:
                    continue
                assert reply.model_version == "1"
                return
            pytest.fail("the gateway never dialled with the rotated certificate")


async def _maas(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "services.cli.main",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode()


async def test_maas_health_and_infer_take_tls_files_and_an_api_key(tmp_path: Path, pki):
    ca = pki["ca"]
    leaf, client = ca.issue("server", server=True), ca.issue("client", server=False)
    settings = EchoSettings(
        port=0, metrics_port=0, tls_cert_file=leaf.cert, tls_key_file=leaf.key, tls_client_ca_file=ca.ca_file
    )
    auth = ApiKeys([KeyEntry(name="ci", key=API_KEY)])
    server = GrpcServer("echo-server", settings, ModelRegistry([echo_model()]), auth=auth)
    async with started(server):
        address = f"localhost:{server.port}"
        files = ("--tls-ca", str(ca.ca_file), "--tls-cert", str(client.cert), "--tls-key", str(client.key))
        status, out = await _maas("health", address, "--model", "echo", *files, "--api-key", API_KEY)
        assert (status, out.split()) == (0, ["SERVING", address, "READY", f"echo@{address}"])
        status, out = await _maas("health", address, "--model", "echo", *files)
        assert status == 1 and f"UNAUTHENTICATED echo@{address}" in out
        status, out = await _maas("health", address, "--tls-ca", str(ca.ca_file), "--timeout", "1")
        assert status == 1 and out.split() == ["DEADLINE_EXCEEDED", address]

    routing = tmp_path / "routing.yaml"
    routing.write_text("targets: {}\nmodels: {}\n")
    gateway_settings = GatewaySettings(
        port=0, metrics_port=0, routing_file=routing, tls_cert_file=leaf.cert, tls_key_file=leaf.key
    )
    async with started(build_server(gateway_settings)) as gateway:
        address = f"localhost:{gateway.port}"
        status, out = await _maas("infer", "embed", "a sentence", "--address", address, "--tls-ca", str(ca.ca_file))
        assert status == 1 and "NOT_FOUND: model 'minilm_embed' is not routed" in out
        status, out = await _maas("infer", "embed", "a sentence", "--address", address)
        assert status == 1 and "UNAVAILABLE" in out


async def test_a_plaintext_target_is_dialled_without_tls_beside_tls_ones(tmp_path: Path, pki):
    async with started(_server(EchoSettings(port=0, metrics_port=0), replica_echo("pool", ["1"]))) as replica:
        routing = _routing_to(tmp_path, replica.port, plaintext=True)
        settings = GatewaySettings(
            port=0, metrics_port=0, routing_file=routing, downstream_tls_ca_file=pki["ca"].ca_file
        )
        request = _pool_request()
        async with (
            started(build_server(settings)) as gateway,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        ):
            reply = await grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
    assert reply.model_version == "1"


async def test_the_gateway_can_require_its_callers_certificates(tmp_path: Path, pki):
    ca = pki["ca"]
    leaf, caller = ca.issue("gateway", server=True), ca.issue("caller", server=False)
    routing = tmp_path / "routing.yaml"
    routing.write_text("targets: {}\nmodels: {}\n")
    settings = GatewaySettings(
        port=0,
        metrics_port=0,
        routing_file=routing,
        tls_cert_file=leaf.cert,
        tls_key_file=leaf.key,
        tls_client_ca_file=ca.ca_file,
    )
    async with started(build_server(settings)) as gateway:
        assert await _live(gateway.port, ClientTls(ca.ca_file, caller.cert, caller.key)) is grpc.StatusCode.OK
        assert await _live(gateway.port, ClientTls(ca.ca_file)) is grpc.StatusCode.UNAVAILABLE
