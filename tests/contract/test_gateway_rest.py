"""The gateway's REST binding on a real socket: JSON and binary tensors, compression, routed models, and
the HTTP status of every kind of refusal (as KServe maps gRPC codes), with API keys and drain."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.common.codec import Tensor, decode_outputs, encode_inputs
from services.common.server import GrpcServer
from services.gateway.hosting import GatewayServer, build_server
from services.gateway.rest import http_status
from services.gateway.routing import Routing
from services.gateway.spec import GatewaySettings
from services.vision.data import load_split
from tests.conftest import TEST_MESSAGE_LIMIT, free_port, started
from tests.traffic.replica import replica

KEY = "rest-key-0123456789abcdef"
IMAGE = {"name": "IMAGE", "shape": [1, 1, 28, 28], "datatype": "FP32"}


def routing(**targets: tuple[int, list[str]]) -> Routing:
    return Routing.model_validate(
        {
            "targets": {name: {"endpoints": [f"127.0.0.1:{port}"]} for name, (port, _) in targets.items()},
            "models": {model: {"target": name} for name, (_, models) in targets.items() for model in models},
        }
    )


async def rest_gateway(routes: Routing, **settings) -> GatewayServer:
    return build_server(
        GatewaySettings(
            port=0,
            metrics_port=0,
            http_port=0,
            max_message_bytes=TEST_MESSAGE_LIMIT,
            drain_grace_seconds=2,
            connect_timeout_seconds=0.5,
            **settings,
        ),
        routes,
    )


@pytest.fixture
async def pool() -> AsyncIterator[GrpcServer]:
    async with started(replica("pool", ["1", "2"])) as server:
        yield server


@pytest.fixture
async def gateway(pool) -> AsyncIterator[GatewayServer]:
    routes = routing(pool=(pool.port, ["pool"]), down=(free_port(), ["down_model"]))
    async with started(await rest_gateway(routes)) as server:
        yield server


@pytest.fixture
async def http(gateway) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{gateway.http.port}"


async def call(http, method: str, path: str, **kwargs) -> tuple[int, Any, Any]:
    session, base = http
    async with session.request(method, base + path, **kwargs) as response:
        body = await response.read()
        return response.status, json.loads(body) if body else {}, response.headers.copy()


def tensor(name: str, datatype: str, shape: list[int], data) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


async def test_health_metadata_index_and_statistics(http):
    assert (await call(http, "GET", "/v2/health/live"))[:2] == (200, {"live": True})
    assert (await call(http, "GET", "/v2/health/ready"))[:2] == (200, {"ready": True})
    status, server, _ = await call(http, "GET", "/v2")
    assert status == 200 and server["name"] == "maas" and "statistics" in server["extensions"]
    status, metadata, _ = await call(http, "GET", "/v2/models/pool")
    assert status == 200 and metadata["name"] == "pool" and metadata["versions"] == ["1", "2"]
    status, metadata, _ = await call(http, "GET", "/v2/models/pool/versions/2")
    assert status == 200 and metadata["platform"] == "maas_echo"
    assert (await call(http, "GET", "/v2/models/pool/versions/2/ready"))[:2] == (200, {"name": "pool", "ready": True})
    status, index, _ = await call(http, "POST", "/v2/repository/index", json={"ready": True})
    assert status == 200 and {("pool", "1"), ("pool", "2"), ("echo", "1")} <= {(m["name"], m["version"]) for m in index}
    await call(http, "POST", "/v2/models/pool/versions/2/infer", json={"inputs": [tensor("X", "INT8", [1], [1])]})
    status, stats, _ = await call(http, "GET", "/v2/models/pool/versions/2/stats")
    (entry,) = stats["model_stats"]
    assert status == 200 and entry["version"] == "2" and entry["inference_count"] >= 1
    assert isinstance(entry["inference_stats"]["success"]["ns"], int)


async def test_json_tensors_of_every_datatype_round_trip(http):
    inputs = [
        tensor("F", "FP32", [2, 2], [[1.5, -2.0], [3.25, 4.0]]),
        tensor("H", "FP16", [2], [0.5, 1.0]),
        tensor("D", "FP64", [1], [1e-300]),
        tensor("I", "INT64", [3], [-(2**63), 0, 2**63 - 1]),
        tensor("U", "UINT8", [2], [0, 255]),
        tensor("B", "BOOL", [2], [True, False]),
        tensor("S", "BYTES", [2], ["caf\u00e9", ""]),
    ]
    status, answer, headers = await call(
        http, "POST", "/v2/models/pool/infer", json={"id": "r1", "inputs": inputs}, headers={"x-request-id": "rest-1"}
    )
    assert status == 200, headers
    assert headers["Content-Type"] == "application/json" and headers["x-request-id"] == "rest-1", headers
    assert answer["id"] == "r1" and answer["model_name"] == "pool" and answer["model_version"] == "2"
    got = {output["name"]: output for output in answer["outputs"]}
    for sent in inputs:
        flat = np.array(sent["data"], dtype=object).reshape(-1).tolist()
        assert got[sent["name"]]["shape"] == sent["shape"] and got[sent["name"]]["data"] == flat, sent["name"]


async def test_binary_tensors_and_compressed_bodies(http):
    ids = np.arange(6, dtype=np.int32).reshape(2, 3)
    texts = [b"\xff\x00 not utf-8", b"ok"]
    text_raw = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    header = json.dumps(
        {
            "inputs": [
                {"name": "IDS", "shape": [2, 3], "datatype": "INT32", "parameters": {"binary_data_size": ids.nbytes}},
                {"name": "T", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(text_raw)}},
            ],
            "outputs": [{"name": "IDS", "parameters": {"binary_data": True}}, {"name": "T"}],
        }
    ).encode()
    body = header + ids.tobytes() + text_raw
    for encoding, data in (("identity", body), ("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        session, base = http
        headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Encoding": encoding}
        async with session.post(f"{base}/v2/models/pool/infer", data=data, headers=headers) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "application/octet-stream"
            raw = await response.read()
            length = int(response.headers["Inference-Header-Content-Length"])
        outputs = {o["name"]: o for o in json.loads(raw[:length])["outputs"]}
        assert outputs["IDS"]["parameters"]["binary_data_size"] == ids.nbytes
        assert outputs["T"]["parameters"]["binary_data_size"] == len(text_raw), "non-UTF-8 BYTES must go binary"
        assert raw[length:] == ids.tobytes() + text_raw, encoding


@pytest.mark.parametrize("hosting", ["grpc"], indirect=True)
async def test_a_routed_model_answers_as_over_grpc(vision_server, hosting):
    image = load_split("test")[0][:1]
    routes = routing(vision=(vision_server.port, ["fashion_cnn"]))
    async with (
        started(await rest_gateway(routes)) as gateway,
        aiohttp.ClientSession() as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        request = {"inputs": [{**IMAGE, "data": image.reshape(-1).tolist()}]}
        async with session.post(f"http://127.0.0.1:{gateway.http.port}/v2/models/fashion_cnn/infer", json=request) as r:
            assert r.status == 200
            (output,) = (await r.json())["outputs"]
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = encode_request("fashion_cnn", Tensor("IMAGE", "FP32", image))
        expected = decode_outputs(await v2.ModelInfer(message))["PROBABILITIES"].array
    assert output["shape"] == [1, 10] and output["data"] == expected.reshape(-1).tolist()


def encode_request(model: str, *tensors: Tensor) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, tensors)
    return request


X = [tensor("X", "INT32", [1], [1])]
BAD_CALLS = [
    ("body not JSON", "POST", "/v2/models/pool/infer", {"data": b"{nope"}, 400, "not JSON"),
    ("no inputs", "POST", "/v2/models/pool/infer", {"json": {"inputs": []}}, 400, "'inputs' must be"),
    (
        "unknown datatype",
        "POST",
        "/v2/models/pool/infer",
        {"json": {"inputs": [tensor("X", "FP8", [1], [1])]}},
        400,
        "FP8",
    ),
    (
        "count mismatch",
        "POST",
        "/v2/models/pool/infer",
        {"json": {"inputs": [tensor("X", "INT32", [2], [1])]}},
        400,
        "needs 2 values",
    ),
    (
        "out of range",
        "POST",
        "/v2/models/pool/infer",
        {"json": {"inputs": [tensor("X", "UINT8", [1], [256])]}},
        400,
        "[0, 255]",
    ),
    (
        "text as number",
        "POST",
        "/v2/models/pool/infer",
        {"json": {"inputs": [tensor("X", "BYTES", [1], [1])]}},
        400,
        "strings",
    ),
    (
        "bad parameter",
        "POST",
        "/v2/models/pool/infer",
        {"json": {"inputs": X, "parameters": {"p": [1]}}},
        400,
        "parameter 'p'",
    ),
    (
        "bad delay",
        "POST",
        "/v2/models/pool/infer",
        {"json": {"inputs": X, "parameters": {"delay_ms": -1}}},
        400,
        "delay_ms",
    ),
    (
        "header length past the body",
        "POST",
        "/v2/models/pool/infer",
        {"data": b"{}", "headers": {"Inference-Header-Content-Length": "99"}},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "bad gzip",
        "POST",
        "/v2/models/pool/infer",
        {"data": b"xx", "headers": {"Content-Encoding": "gzip"}},
        400,
        "gzip",
    ),
    (
        "unsupported encoding",
        "POST",
        "/v2/models/pool/infer",
        {"data": b"x", "headers": {"Content-Encoding": "br"}},
        400,
        "br",
    ),
    ("unknown model", "POST", "/v2/models/nope/infer", {"json": {"inputs": X}}, 404, "nope"),
    ("unknown model metadata", "GET", "/v2/models/nope", {}, 404, "nope"),
    ("unknown version", "POST", "/v2/models/pool/versions/7/infer", {"json": {"inputs": X}}, 404, "7"),
    ("unknown version ready", "GET", "/v2/models/echo/versions/7/ready", {}, 503, "version 7 is not ready"),
    ("unknown route", "GET", "/v3/whatever", {}, 404, "/v2/"),
    ("wrong method", "GET", "/v2/models/pool/infer", {}, 405, "Method Not Allowed"),
    ("target down", "POST", "/v2/models/down_model/infer", {"json": {"inputs": X}}, 503, "cannot reach"),
    ("target down, ready", "GET", "/v2/models/down_model/ready", {}, 503, "cannot reach"),
    ("body over the limit", "POST", "/v2/models/pool/infer", {"data": b" " * (TEST_MESSAGE_LIMIT + 1)}, 413, "limit"),
    (
        "gzip over the limit",
        "POST",
        "/v2/models/pool/infer",
        {"data": gzip.compress(b" " * (4 * TEST_MESSAGE_LIMIT)), "headers": {"Content-Encoding": "gzip"}},
        413,
        "limit",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
async def test_bad_calls_get_their_http_status_and_a_readable_error(http, method, path, kwargs, status, fragment):
    got, answer, headers = await call(http, method, path, **kwargs)
    assert got == status, answer
    assert fragment in answer["error"], answer
    assert "Traceback" not in answer["error"] and " object at 0x" not in answer["error"]
    if status != 405 and "v3" not in path:
        assert headers["x-request-id"]


def test_grpc_codes_map_to_http_statuses_as_kserve_does():
    assert [
        http_status(code)
        for code in (
            grpc.StatusCode.OK,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNKNOWN,
        )
    ] == [200, 400, 404, 503, 501, 500, 401, 429, 504, 500]


async def test_api_keys_and_rate_limits_apply_to_http(pool, tmp_path: Path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: team, key: {KEY}, rate_per_second: 0.01, burst: 2}}\n")
    async with (
        started(await rest_gateway(routing(pool=(pool.port, ["pool"])), api_keys_file=keys)) as gateway,
        aiohttp.ClientSession() as session,
    ):
        http = (session, f"http://127.0.0.1:{gateway.http.port}")
        body = {"json": {"inputs": X}}
        status, answer, _ = await call(http, "POST", "/v2/models/pool/infer", **body)
        assert status == 401 and "missing API key" in answer["error"]
        wrong = {"Authorization": "Bearer not-the-key-at-all-000"}
        assert (await call(http, "POST", "/v2/models/pool/infer", headers=wrong, **body))[0] == 401
        right = {"Authorization": f"Bearer {KEY}"}
        assert (await call(http, "POST", "/v2/models/pool/infer", headers=right, **body))[0] == 200
        assert (await call(http, "GET", "/v2/models/pool", headers=right))[0] == 200
        status, answer, _ = await call(http, "POST", "/v2/models/pool/infer", headers=right, **body)
        assert status == 429 and "rate limit" in answer["error"]
        assert (await call(http, "GET", "/v2/health/ready"))[0] == 200, "health needs no key"


async def test_a_draining_gateway_answers_503_and_finishes_calls_in_flight(gateway, http):
    slow = {"json": {"inputs": X, "parameters": {"delay_ms": 500}}}
    in_flight = asyncio.create_task(call(http, "POST", "/v2/models/echo/infer", **slow))
    await asyncio.sleep(0.2)
    stopping = asyncio.create_task(gateway.stop())
    await asyncio.sleep(0.05)
    status, answer, headers = await call(http, "POST", "/v2/models/echo/infer", json={"inputs": X})
    assert status == 503 and "shutting down" in answer["error"] and headers["x-maas-not-run"] == "draining"
    assert (await call(http, "GET", "/v2/health/ready"))[0] == 503
    assert (await in_flight)[0] == 200
    await stopping


def certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=ca",
    )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (directory / f"{name}.ext").write_text(extension + "\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )
    return {name: directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


async def test_the_http_port_serves_https_with_the_gateways_tls_files(pool, tmp_path: Path):
    files = certificates(tmp_path)
    tls = {"tls_cert_file": files["server.pem"], "tls_key_file": files["server.key"]}
    routes = routing(pool=(pool.port, ["pool"]))
    async with (
        started(await rest_gateway(routes, **tls, tls_client_ca_file=files["ca.pem"])) as gateway,
        aiohttp.ClientSession() as session,
    ):
        url = f"https://127.0.0.1:{gateway.http.port}/v2/models/echo/infer"
        trusted = ssl.create_default_context(cafile=str(files["ca.pem"]))
        with pytest.raises(aiohttp.ClientError):
            async with session.post(url, json={"inputs": X}, ssl=trusted) as response:
                await response.read()
        trusted.load_cert_chain(files["client.pem"], files["client.key"])
        async with session.post(url, json={"inputs": X}, ssl=trusted) as response:
            assert response.status == 200 and (await response.json())["outputs"][0]["data"] == [1]
