"""The native front (`front=native`) beside the Python one: real servers on real sockets, the same answers.

Both servers serve the same tiny CNN. Requests and responses travel as bytes (no stubs in between), so
"the same" means the same bytes on the wire; a request computed in a batch with others may differ from
the same request computed alone in the last bits of its probabilities (the kernels differ by batch size).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc
from services.bench import perf_analyzer
from services.common.batchcost import MIN_BATCHES
from services.common.front import load_extension
from services.common.server import GrpcServer, build_server
from services.common.settings import ModelServiceSettings
from services.common.timing import TIMING_KEY, parse
from services.vision.spec import SPEC
from tests.conftest import REPO_ROOT, started, vision_settings
from tests.integration.processes import maas_process

INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL = "fashion_cnn"


def settings(repository: Path, front: str, **overrides):
    return vision_settings(repository).model_copy(update={"front": front, **overrides})


@pytest.fixture
async def fronts(model_repository: Path) -> AsyncIterator[tuple[GrpcServer, GrpcServer]]:
    """The vision service twice: with the Python front, and with the native one."""
    async with (
        started(build_server(SPEC, settings(model_repository, "python"))) as python,
        started(build_server(SPEC, settings(model_repository, "native"))) as native,
    ):
        assert native.front is not None
        yield python, native


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def infer_request(array: np.ndarray, request_id: str = "", version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version, id=request_id)
    request.inputs.add(name="IMAGE", datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


async def call(server: GrpcServer, method: str, request: bytes, metadata=(), timeout=10.0):
    """A unary call in bytes: (status code, details, response bytes or None, trailing metadata)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        rpc = channel.unary_unary(method)(request, metadata=metadata, timeout=timeout)
        try:
            response = await rpc
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details(), None, tuple(exc.trailing_metadata() or ())
        return grpc.StatusCode.OK, "", response, tuple(await rpc.trailing_metadata())


def request_id(trailing) -> str:
    return dict(trailing)["x-request-id"]


async def test_fast_path_answers_the_bytes_the_python_front_answers(fronts):
    python, native = fronts
    for version, rows in (("", 1), ("1", 3), ("", 32)):
        request = infer_request(images(rows, rows), request_id=f"req-{rows}", version=version).SerializeToString()
        metadata = (("x-request-id", f"caller-{rows}"),)
        before = native.front.answered
        expected = await call(python, INFER, request, metadata)
        got = await call(native, INFER, request, metadata)
        assert got[0] == expected[0] == grpc.StatusCode.OK
        assert got[2] == expected[2], "the same response bytes"
        assert request_id(got[3]) == request_id(expected[3]) == f"caller-{rows}"
        assert native.front.answered == before + 1, "answered by the native front, not proxied"


async def test_fast_path_makes_a_request_id_when_the_caller_sends_none(fronts):
    _, native = fronts
    before = native.front.answered
    first = await call(native, INFER, infer_request(images(1)).SerializeToString())
    second = await call(native, INFER, infer_request(images(1)).SerializeToString())
    assert native.front.answered == before + 2, "answered by the native front, not proxied"
    assert request_id(first[3]) != request_id(second[3])
    assert len(request_id(first[3])) == 32


async def test_a_call_asking_for_timing_is_answered_here_with_the_python_servers_fields(fronts):
    python, native = fronts
    request = infer_request(images(2), request_id="timed").SerializeToString()
    asked = ((TIMING_KEY, "1"),)
    before = native.front.answered
    expected = await call(python, INFER, request, asked)
    got = await call(native, INFER, request, asked)
    untimed = await call(native, INFER, request)
    assert got[0] == expected[0] == untimed[0] == grpc.StatusCode.OK
    assert got[2] == expected[2], "the same response bytes"
    assert native.front.answered == before + 2, "answered by the native front, not proxied"
    [entry] = [parse(value) for key, value in got[3] if key == TIMING_KEY]
    [python_entry] = [parse(value) for key, value in expected[3] if key == TIMING_KEY]
    assert list(entry) == list(python_entry)
    assert {key: entry[key] for key in ("hop", "model", "version")} == {
        key: python_entry[key] for key in ("hop", "model", "version")
    }
    assert entry["batch_size"] == "2" and entry["batch_wait_us"] == "0"
    assert int(entry["compute_us"]) > 0
    assert int(entry["queue_us"]) + int(entry["compute_us"]) <= int(entry["total_us"])
    assert TIMING_KEY not in dict(untimed[3]), "a caller who does not ask gets no entry"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r.inputs[0].ClearField("shape") or r.inputs[0].shape.extend([1, 1, 28, 27]),
        lambda r: setattr(r.inputs[0], "datatype", "FP64"),
        lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-4]),
        lambda r: setattr(r, "model_version", "99"),
        lambda r: r.inputs[0].ClearField("shape") or r.inputs[0].shape.extend([0, 1, 28, 28]),
        lambda r: setattr(r, "model_name", "no_such_model"),
    ],
    ids=["shape", "datatype", "raw-size", "version", "no-rows", "model"],
)
async def test_a_request_off_the_fast_path_gets_the_python_servers_answer(fronts, mangle):
    python, native = fronts
    request = infer_request(images(1), request_id="bad")
    mangle(request)
    before = native.front.answered
    expected = await call(python, INFER, request.SerializeToString())
    got = await call(native, INFER, request.SerializeToString())
    assert expected[0] in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert got[:3] == expected[:3]
    assert [key for key, _ in got[3]] == [key for key, _ in expected[3]]
    assert native.front.answered == before


async def test_undecodable_bytes_get_the_python_servers_invalid_argument(fronts):
    python, native = fronts
    expected = await call(python, INFER, b"\xff\xff\xff")
    got = await call(native, INFER, b"\xff\xff\xff")
    assert expected[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert got[:3] == expected[:3]


async def test_an_out_of_range_image_is_refused_while_its_batch_mates_are_answered(fronts):
    python, native = fronts
    bad = images(2, 7)
    bad[1, 0, 3, 3] = 1.5
    bad_request = infer_request(bad, request_id="bad").SerializeToString()
    expected = await call(python, INFER, bad_request)
    assert expected[0] == grpc.StatusCode.INVALID_ARGUMENT and "[0, 1]" in expected[1]
    goods = [infer_request(images(1, seed), request_id=f"good-{seed}").SerializeToString() for seed in range(15)]
    before = native.front.answered
    results = await asyncio.gather(*(call(native, INFER, r) for r in [*goods[:8], bad_request, *goods[8:]]))
    assert results[8][:3] == expected[:3]
    oks = [r for i, r in enumerate(results) if i != 8]
    assert all(r[0] == grpc.StatusCode.OK for r in oks)
    for good, got in zip(goods, oks, strict=True):
        alone = pb.ModelInferResponse.FromString((await call(python, INFER, good))[2])
        batched = pb.ModelInferResponse.FromString(got[2])
        assert batched.id == alone.id and batched.outputs == alone.outputs
        probabilities = [np.frombuffer(r.raw_output_contents[0], np.float32) for r in (batched, alone)]
        np.testing.assert_allclose(*probabilities, atol=1e-6)
    assert native.front.answered == before + len(goods)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("ServerLive", pb.ServerLiveRequest()),
        ("ServerReady", pb.ServerReadyRequest()),
        ("ServerMetadata", pb.ServerMetadataRequest()),
        ("ModelReady", pb.ModelReadyRequest(name=MODEL)),
        ("ModelMetadata", pb.ModelMetadataRequest(name=MODEL)),
        ("ModelConfig", pb.ModelConfigRequest(name=MODEL)),
        ("ModelMetadata", pb.ModelMetadataRequest(name="no_such_model")),
        ("RepositoryIndex", pb.RepositoryIndexRequest()),
    ],
)
async def test_other_methods_are_proxied_unchanged(fronts, method, message):
    python, native = fronts
    full = f"/inference.GRPCInferenceService/{method}"
    expected = await call(python, full, message.SerializeToString())
    got = await call(native, full, message.SerializeToString())
    assert got[:3] == expected[:3]


async def test_statistics_count_fast_path_requests(fronts):
    _, native = fronts
    request = infer_request(images(2), request_id="s").SerializeToString()

    async def stats() -> pb.ModelStatistics:
        asked = pb.ModelStatisticsRequest(name=MODEL, version="1").SerializeToString()
        raw = await call(native, "/inference.GRPCInferenceService/ModelStatistics", asked)
        return pb.ModelStatisticsResponse.FromString(raw[2]).model_stats[0]

    before, answered = await stats(), native.front.answered
    for _ in range(3):
        assert (await call(native, INFER, request))[0] == grpc.StatusCode.OK
    after = await stats()
    assert native.front.answered == answered + 3, "answered by the native front, not proxied"
    assert after.inference_count - before.inference_count == 6
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.execution_count - before.execution_count == 3


async def test_health_and_streams_work_through_the_proxy(fronts):
    _, native = fronts
    async with grpc.aio.insecure_channel(f"127.0.0.1:{native.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await anext(aiter(watch))).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        requests = [infer_request(images(1, i), request_id=f"stream-{i}") for i in range(3)]
        requests.insert(1, pb.ModelInferRequest(model_name="no_such_model", id="missing"))
        responses = [r async for r in v2.ModelStreamInfer(iter(requests))]
    assert [r.infer_response.id for r in responses] == ["stream-0", "missing", "stream-1", "stream-2"]
    assert [bool(r.error_message) for r in responses] == [False, True, False, False]
    assert "no_such_model" in responses[1].error_message


async def test_a_stream_the_python_server_ends_at_once_ends_through_the_front(fronts):
    python, native = fronts
    results = []
    for server in (python, native):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = channel.stream_stream("/inference.GRPCInferenceService/NoSuchStream")(timeout=5)
            started_at = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                while True:
                    if await stream.read() == grpc.aio.EOF:
                        break
            results.append((raised.value.code(), raised.value.details(), time.monotonic() - started_at))
    (expected_code, expected_details, _), (code, details, elapsed) = results
    assert expected_code == grpc.StatusCode.UNIMPLEMENTED
    assert (code, details) == (expected_code, expected_details)
    assert elapsed < 2, "the status came while the caller neither sent nor half-closed"


async def test_one_route_and_pump_per_loaded_version(fronts):
    _, native = fronts
    model = native.models.get(MODEL)
    ready = sorted(entry.version for entry in model.index() if entry.state == "READY")
    pumps = sorted(t.name for t in threading.enumerate() if t.name.startswith(f"front-{MODEL}:"))
    assert pumps == [f"front-{MODEL}:{version}" for version in ready]
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("front-"))
    before = native.front.answered
    for version in ("", model.get("").version):
        assert (await call(native, INFER, infer_request(images(1), version=version).SerializeToString()))[0] == (
            grpc.StatusCode.OK
        )
    assert native.front.answered == before + 2


def scheduling_policies() -> dict[int, int]:
    """This process's threads' scheduling policies, by thread id (a thread that ends meanwhile is left out)."""
    policies = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            policies[int(task.name)] = os.sched_getscheduler(int(task.name))
    return policies


async def test_the_grpc_threads_run_as_sched_batch_and_the_python_threads_do_not(fronts):
    _, native = fronts
    for _ in range(4):
        assert (await call(native, INFER, infer_request(images(1)).SerializeToString()))[0] == grpc.StatusCode.OK
    policies = scheduling_policies()
    python_threads = [t.native_id for t in threading.enumerate()]
    assert any(t.name.startswith(f"front-{MODEL}:") for t in threading.enumerate()), "no pump runs"
    assert [policies.get(tid, os.SCHED_OTHER) for tid in python_threads] == [os.SCHED_OTHER] * len(python_threads)
    assert os.SCHED_BATCH in policies.values(), "no thread that ran the front's calls runs as SCHED_BATCH"


async def test_a_batch_that_fails_is_answered_by_the_python_server_at_once(fronts, monkeypatch):
    python, native = fronts
    instance = native.models.get(MODEL).get("").model
    predict = instance.predict
    failed = []

    def fail_once(arrays):
        if not failed:
            failed.append(threading.current_thread().name)
            raise RuntimeError("injected failure")
        return predict(arrays)

    monkeypatch.setattr(instance, "predict", fail_once)
    request = infer_request(images(1, 3), request_id="failed-batch").SerializeToString()
    before = native.front.answered
    got = await call(native, INFER, request, timeout=5)
    assert failed and failed[0].startswith("front-"), "the front's batch failed"
    assert got[0] == grpc.StatusCode.OK, got[:2]
    assert got[2] == (await call(python, INFER, request))[2]
    assert native.front.answered == before


async def test_a_batch_over_the_image_limit_is_prepared_call_by_call(model_repository: Path):
    async with started(build_server(SPEC, settings(model_repository, "native", max_images=2))) as native:
        requests = [infer_request(images(2, seed), request_id=f"pair-{seed}").SerializeToString() for seed in range(12)]
        before = native.front.answered
        results = await asyncio.gather(*(call(native, INFER, r) for r in requests))
        assert [r[0] for r in results] == [grpc.StatusCode.OK] * len(requests)
        assert native.front.answered == before + len(requests), "answered by the native front, not proxied"


async def test_a_latency_target_is_held_here_on_the_cost_the_pump_learns(model_repository: Path):
    """A 10 us target no image meets: the calls before the cost is known are answered here; then each
    call, which alone would end late, is refused at once."""
    async with started(build_server(SPEC, settings(model_repository, "native", max_latency_ms=0.01))) as native:
        request = infer_request(images(1)).SerializeToString()
        before = native.front.answered
        codes = [(await call(native, INFER, request))[0] for _ in range(MIN_BATCHES + 3)]
        assert codes == [grpc.StatusCode.OK] * MIN_BATCHES + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        assert native.front.answered == before + MIN_BATCHES, "answered by the native front, not proxied"


def route_m_request(rows: int = 1) -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="X", datatype="FP32", shape=[rows, 2])
    request.raw_input_contents.append(np.zeros(2 * rows, np.float32).tobytes())
    return request.SerializeToString()


async def queued_call(front, timeout: float, channel: grpc.aio.Channel | None = None, rows: int = 1):
    """A ModelInfer of `rows` rows for route `m` of a bare front whose route has no pump: it waits in the
    queue (on `channel`, else on a channel of its own)."""
    async with contextlib.AsyncExitStack() as stack:
        if channel is None:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{front.port}"))
        rpc = channel.unary_unary(INFER)(route_m_request(rows), timeout=timeout)
        try:
            await rpc
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details(), dict(exc.trailing_metadata() or ())
    raise AssertionError("a call with no pump was answered")


@pytest.fixture
async def bare_front():
    """The extension's front before an empty grpc.aio server, with one route `m` and no pump."""
    async with bare(target_ns=0) as front:
        yield front


@pytest.fixture
async def targeted_front():
    """`bare_front` whose route has a latency target of `TARGET_NS`."""
    async with bare(target_ns=TARGET_NS) as front:
        yield front


TARGET_NS = 20_000_000
DEFAULT_MAX_STREAMS = ModelServiceSettings.model_fields["front_max_streams"].default


@contextlib.asynccontextmanager
async def bare(target_ns: int, max_streams: int = DEFAULT_MAX_STREAMS):
    upstream = grpc.aio.server()
    port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    front = load_extension().Front(
        address="127.0.0.1:0",
        upstream=f"127.0.0.1:{port}",
        max_message_bytes=1 << 20,
        max_connection_age_ms=0,
        max_connection_age_grace_ms=0,
        max_streams=max_streams,
        id_prefix="bare",
    )
    handle = front.register("m", [""], [("X", "FP32", [2])], [("Y", "FP32", [])], 8, 10, target_ns)
    yield front, handle
    await asyncio.to_thread(front.shutdown, 0)
    await upstream.stop(0)


async def test_a_call_whose_deadline_passes_in_the_queue_counts_as_expired(bare_front):
    front, handle = bare_front
    code, *_ = await queued_call(front, timeout=0.3)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert front.take(handle, 8, 1000) is None
    assert front.dropped(handle) == (0, 1, 0, 0)


async def queued(front, count: int) -> None:
    for _ in range(100):
        if front.in_flight == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{front.in_flight} calls queued, not {count}")


async def test_a_call_that_finds_the_queue_full_is_refused_there_not_proxied(bare_front):
    front, handle = bare_front
    waiting = [asyncio.ensure_future(queued_call(front, timeout=10)) for _ in range(10)]
    await queued(front, 10)
    code, details, trailing = await queued_call(front, timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "model 'm' has 10 requests queued, its limit; retry shortly"
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 10_000_000, "no cost fit: the shortest retry delay"
    assert front.dropped(handle) == (0, 0, 0, 1)
    assert front.in_flight == 10
    await asyncio.to_thread(front.shutdown, 0)
    assert {(await call)[0] for call in waiting} == {grpc.StatusCode.UNAVAILABLE}


async def test_a_call_the_work_ahead_would_make_late_is_refused_at_once_with_a_retry_delay(targeted_front):
    front, handle = targeted_front
    front.set_cost(handle, fixed_ns=50e6, per_row_ns=0.0, margin_ns=0.0, forgiven_ns=0.0)
    first = asyncio.ensure_future(queued_call(front, timeout=10))
    await queued(front, 1)
    code, details, trailing = await queued_call(front, timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cannot answer within its 20 ms target now" in details
    assert not first.done(), "the idle route's call is queued, not refused"
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert (status.code, status.message) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], details)
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 50_000_000, "the retry delay is the work ahead, one 50 ms batch"
    assert "x-request-id" in trailing
    assert front.dropped(handle) == (0, 0, 1, 0)
    batch, counts, _ = front.take(handle, 8, 1000)
    assert counts == [1]
    del batch
    assert (await first)[0] == grpc.StatusCode.UNIMPLEMENTED, "the batch dropped unanswered goes to the Python server"


async def test_a_targeted_route_learns_how_long_its_calls_take_to_be_written(targeted_front):
    """The time from finishing a call to gRPC having written it is measured for refusals, as for answers."""
    front, handle = targeted_front
    assert front.write_ns(handle) == 0
    front.set_cost(handle, fixed_ns=50e6, per_row_ns=0.0, margin_ns=0.0, forgiven_ns=0.0)
    first = asyncio.ensure_future(queued_call(front, timeout=10))
    await queued(front, 1)
    code, *_ = await queued_call(front, timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(100):
        if front.write_ns(handle) > 0:
            break
        await asyncio.sleep(0.01)
    assert 0 < front.write_ns(handle) < 1e9, "the refusal's write time, in ns"
    batch, _, _ = front.take(handle, 8, 1000)
    del batch
    assert (await first)[0] == grpc.StatusCode.UNIMPLEMENTED, "the batch dropped unanswered goes to the Python server"


async def test_a_targeted_route_counts_the_answers_written_after_its_target(targeted_front):
    front, handle = targeted_front
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.zeros(2, np.float32).tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        answer = asyncio.ensure_future(channel.unary_unary(INFER)(request.SerializeToString(), timeout=10))
        await queued(front, 1)
        await asyncio.sleep(2 * TARGET_NS / 1e9)
        batch, counts, _ = front.take(handle, 8, 1000)
        assert counts == [1], "with no cost fitted yet, nothing is refused for the target"
        load_extension().reply(batch, "1", [np.ones(1, np.float32)], timings={})
        response = pb.ModelInferResponse.FromString(await answer)
    assert response.raw_output_contents == [np.ones(1, np.float32).tobytes()]
    for _ in range(100):
        if (written := front.written(handle)) != (0, 0):
            break
        await asyncio.sleep(0.01)
    assert written == (1, 0), "one answer, written after the target"
    assert front.written(handle) == (0, 0), "counted once"


async def test_a_batch_names_the_calls_that_asked_for_timing_and_each_gets_its_entry(bare_front):
    front, handle = bare_front
    asks = ("1", "true", "0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        calls = []
        for ask in asks:
            calls.append(channel.unary_unary(INFER)(route_m_request(), metadata=((TIMING_KEY, ask),)))
            await queued(front, len(calls))
        batch, counts, _ = front.take(handle, 8, 1000)
        assert counts == [1, 1, 1]
        assert batch.timed == [0, 1], "'1' and 'true' ask, as the Python server reads them; '0' does not"
        load_extension().reply(batch, "1", [np.ones(3, np.float32)], timings={0: "first", 1: "second"})
        trailing = [tuple(await call.trailing_metadata()) for call in calls]
    assert [[value for key, value in pairs if key == TIMING_KEY] for pairs in trailing] == [["first"], ["second"], []]
    assert all(request_id(pairs) for pairs in trailing), "the request id as well"


async def aged_calls(front, count: int, seconds: float) -> list[asyncio.Future]:
    """`count` one-row calls queued on the bare front's route, `seconds` after they were all queued."""
    calls = [asyncio.ensure_future(queued_call(front, timeout=10)) for _ in range(count)]
    await queued(front, count)
    await asyncio.sleep(seconds)
    return calls


async def test_a_queued_call_that_can_no_longer_end_in_time_is_refused_when_its_batch_is_taken(targeted_front):
    front, handle = targeted_front
    front.set_cost(handle, fixed_ns=1e6, per_row_ns=0.0, margin_ns=0.0, forgiven_ns=0.0)
    calls = await aged_calls(front, 2, seconds=2 * TARGET_NS / 1e9)
    batch, counts, _ = front.take(handle, 8, 1000)
    assert counts == [1], "the first call, admitted by the idle route, runs whatever its wait; the other is late"
    codes = set()
    del batch
    for done in asyncio.as_completed(calls):
        codes.add((await done)[0])
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}, (
        "late one refused, taken one proxied"
    )
    assert front.dropped(handle) == (0, 0, 1, 0)


async def test_a_targeted_batch_takes_as_many_calls_as_its_oldest_calls_time_allows():
    """In order, while the batch would still end in time: the fourth call would end it past the oldest's
    deadline, and is left for the next batch."""
    async with bare(target_ns=2_000_000_000) as (front, handle):
        front.set_cost(handle, fixed_ns=100e6, per_row_ns=400e6, margin_ns=0.0, forgiven_ns=0.0)
        calls = await aged_calls(front, 4, seconds=0.4)
        batch, counts, _ = front.take(handle, 8, 1000)
        assert counts == [1, 1, 1], "1.3 s for three within the oldest's 1.6 s left; 1.7 s for four is not"
        rest, counts, _ = front.take(handle, 8, 1000)
        assert counts == [1]
        del batch, rest
        assert {(await call)[0] for call in calls} == {grpc.StatusCode.UNIMPLEMENTED}, "all taken, then proxied"
        assert front.dropped(handle) == (0, 0, 0, 0)


async def test_a_targeted_batch_is_sized_on_the_fit_without_its_margin():
    """The margin plans admissions; the take passes over an admitted call only when the fit says it would be
    late (docs/native-front.md). 200 ms a row and a margin of 0.5 s: after 1 s the oldest call has 1 s left,
    time for all three calls on the fit (0.6 s), and for two with the margin."""
    async with bare(target_ns=2_000_000_000) as (front, handle):
        front.set_cost(handle, fixed_ns=0.0, per_row_ns=200e6, margin_ns=500e6, forgiven_ns=0.0)
        calls = await aged_calls(front, 3, seconds=1.0)
        batch, counts, _ = front.take(handle, 8, 1000)
        assert counts == [1, 1, 1]
        del batch
        assert {(await call)[0] for call in calls} == {grpc.StatusCode.UNIMPLEMENTED}
        assert front.dropped(handle) == (0, 0, 0, 0)


async def test_an_untargeted_batch_takes_a_younger_call_past_one_too_large_for_the_rows_left(bare_front):
    front, handle = bare_front
    calls = []
    for rows in (4, 8, 2):
        calls.append(asyncio.ensure_future(queued_call(front, timeout=10, rows=rows)))
        await queued(front, len(calls))
    batches = []
    for _ in range(2):
        batch, counts, _ = front.take(handle, 8, 1000)
        batches.append(counts)
        del batch
    assert batches == [[4, 2], [8]]
    assert {(await call)[0] for call in calls} == {grpc.StatusCode.UNIMPLEMENTED}


@contextlib.asynccontextmanager
async def busy(front, handle):
    """The route running a batch (so that calls queued in the block are not an idle route's probes, which
    are never passed over), answered when the block ends."""
    warm = asyncio.ensure_future(queued_call(front, timeout=10))
    await queued(front, 1)
    running, _, _ = front.take(handle, 8, 1000)
    yield
    del running
    assert (await warm)[0] == grpc.StatusCode.UNIMPLEMENTED


async def test_calls_short_of_time_make_way_for_a_full_batch_of_younger_ones():
    """Under overload a batch cut to the oldest calls' time would cost more per call and fall further behind
    (docs/native-front.md): the take runs the full batch anchored on a younger call, and leaves the older
    ones queued (refused at the next take if late by then). A batch costs 100 ms + 100 ms a row against a
    2 s target; the calls queued 1.35 s before the others have at most 0.65 s left: time for a batch of 5
    rows, not 8, and for their own batch of 2 while 0.3 s is left."""
    async with bare(target_ns=2_000_000_000) as (front, handle):
        front.set_cost(handle, fixed_ns=100e6, per_row_ns=100e6, margin_ns=0.0, forgiven_ns=0.0)
        async with busy(front, handle):
            old = [asyncio.ensure_future(queued_call(front, timeout=10)) for _ in range(2)]
            await queued(front, 3)
        await asyncio.sleep(1.35)
        young = [asyncio.ensure_future(queued_call(front, timeout=10)) for _ in range(8)]
        await queued(front, 10)
        batch, counts, arrived = front.take(handle, 8, 1000)
        assert counts == [1] * 8, "a full batch: 0.9 s, within the young calls' time"
        stale, counts, arrived_before = front.take(handle, 8, 1000)
        assert counts == [1, 1], "the old calls, 0.3 s within their time left, in the next batch"
        assert max(arrived_before) < min(arrived), "the old calls made way"
        del batch, stale
        assert {(await call)[0] for call in old + young} == {grpc.StatusCode.UNIMPLEMENTED}
        assert front.dropped(handle) == (0, 0, 0, 0)


async def test_a_call_too_large_for_the_batch_does_not_hide_that_time_cut_it_short():
    """Calls of many rows, 110 ms a row against a 2 s target: the oldest call, queued 1.47 s before the
    others, has time for 4 rows, so its batch is cut by its time (1 + 4 rows would end too late), and the
    call of 8 rows does not fit beside it. The search still runs, and takes the two calls of 4 rows."""
    async with bare(target_ns=2_000_000_000) as (front, handle):
        front.set_cost(handle, fixed_ns=0.0, per_row_ns=110e6, margin_ns=0.0, forgiven_ns=0.0)
        async with busy(front, handle):
            oldest = asyncio.ensure_future(queued_call(front, timeout=10))
            await queued(front, 2)
        await asyncio.sleep(1.47)
        younger = []
        for rows in (4, 4, 8):
            younger.append(asyncio.ensure_future(queued_call(front, timeout=10, rows=rows)))
            await queued(front, len(younger) + 1)
        batches = []
        for _ in range(3):
            batch, counts, _ = front.take(handle, 8, 1000)
            batches.append(counts)
            del batch
        assert batches == [[4, 4], [1], [8]]
        assert {(await call)[0] for call in [oldest, *younger]} == {grpc.StatusCode.UNIMPLEMENTED}
        assert front.dropped(handle) == (0, 0, 0, 0)


async def test_a_connection_over_its_stream_limit_holds_its_next_call_while_other_connections_are_served():
    async with bare(target_ns=0, max_streams=1) as (front, _handle):
        own = [("grpc.use_local_subchannel_pool", 1)]
        address = f"127.0.0.1:{front.port}"
        async with (
            grpc.aio.insecure_channel(address, options=own) as one,
            grpc.aio.insecure_channel(address, options=own) as other,
        ):
            first = asyncio.ensure_future(queued_call(front, 5, one))
            await queued(front, 1)
            code, *_ = await queued_call(front, 0.5, one)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert front.in_flight == 1, "the call over the limit reached the front"
            second = asyncio.ensure_future(queued_call(front, 5, other))
            await queued(front, 2)
            await asyncio.to_thread(front.shutdown, 0)
            assert [(await call)[0] for call in (first, second)] == [grpc.StatusCode.UNAVAILABLE] * 2


async def test_shutdown_fails_the_calls_still_queued_after_the_grace(bare_front):
    front, _ = bare_front
    caller = asyncio.ensure_future(queued_call(front, timeout=30))
    for _ in range(100):
        if front.in_flight:
            break
        await asyncio.sleep(0.01)
    assert front.in_flight == 1
    started_at = time.monotonic()
    stopping = threading.Thread(target=front.shutdown, args=(0.2,), daemon=True)
    stopping.start()
    await asyncio.to_thread(stopping.join, 5)
    assert not stopping.is_alive(), "shutdown returned"
    assert time.monotonic() - started_at < 2
    code, *_ = await caller
    assert code == grpc.StatusCode.UNAVAILABLE
    assert front.in_flight == 0


def slow_echo(ms: int) -> bytes:
    request = pb.ModelInferRequest(model_name="echo", raw_input_contents=[b"\x01"])
    request.inputs.add(name="X", datatype="INT8", shape=[1])
    request.parameters["delay_ms"].int64_param = ms
    return request.SerializeToString()


async def test_deadline_and_cancellation_reach_the_python_server(fronts):
    _, native = fronts
    started_at = asyncio.get_running_loop().time()
    code, *_ = await call(native, INFER, slow_echo(5000), timeout=0.3)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert asyncio.get_running_loop().time() - started_at < 2
    async with grpc.aio.insecure_channel(f"127.0.0.1:{native.port}") as channel:
        rpc = channel.unary_unary(INFER)(slow_echo(5000))
        await asyncio.sleep(0.3)
        assert native.lifecycle.in_flight == 1
        rpc.cancel()
        for _ in range(50):
            if native.lifecycle.in_flight == 0:
                break
            await asyncio.sleep(0.02)
    assert native.lifecycle.in_flight == 0, "the cancel reached the Python server"


async def test_perf_analyzer_runs_with_no_error_against_the_native_front(fronts):
    _, native = fronts
    before = native.front.answered
    result = await perf_analyzer.run(MODEL, f"127.0.0.1:{native.port}", concurrency=4, window_ms=300)
    assert result.throughput > 0
    assert "Successful request count" in result.output
    assert native.front.answered > before


async def test_sigterm_drains_the_native_front_without_losing_a_call(model_repository: Path):
    env = {
        "MAAS_MODEL_REPOSITORY": str(model_repository),
        "MAAS_VISION_FRONT": "native",
        "MAAS_VISION_METRICS_PORT": "0",
        "MAAS_VISION_DRAIN_GRACE_SECONDS": "5",
    }
    async with maas_process("run", "vision", "--port", "0", ready="vision", env=env) as service:
        async with grpc.aio.insecure_channel(service.address) as channel:
            infer = channel.unary_unary(INFER)
            request = infer_request(images(1)).SerializeToString()
            assert await infer(request)
            slow = [asyncio.ensure_future(infer(slow_echo(1000))) for _ in range(4)]

            async def keep_calling() -> int:
                answered = 0
                while not all(s.done() for s in slow):
                    try:
                        await infer(request, timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        return answered
                    answered += 1
                return answered

            callers = [asyncio.ensure_future(keep_calling()) for _ in range(8)]
            await asyncio.sleep(0.3)
            service.process.send_signal(signal.SIGTERM)
            assert len(await asyncio.gather(*slow)) == 4
            assert sum(await asyncio.gather(*callers)) > 0
        assert await asyncio.wait_for(service.process.wait(), 10) == 0


def test_the_front_refuses_to_load_beside_grpcio_tools_protoc():
    """Loaded after grpcio-tools' protoc, the front's libprotobuf would take protoc's protobuf globals for its
    own and abort the process: it refuses instead, saying why."""
    script = (
        "import grpc_tools.protoc\n"
        "from services.common.front import load_extension\n"
        "try:\n    load_extension()\nexcept RuntimeError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert "cannot load in a process that has loaded grpc_tools._protoc_compiler" in done.stdout
