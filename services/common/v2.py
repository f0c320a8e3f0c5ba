"""The Open Inference Protocol servicer: dispatches v2 calls to the models a server registers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from importlib.metadata import version as package_version

import grpc

from maas.inference import grpc_service_pb2 as pb
from maas.inference import grpc_service_pb2_grpc as pb_grpc
from maas.inference import model_config_pb2 as config_pb
from services.common import offload, timing
from services.common.codec import InferReply, as_message, decode_inputs, infer_reply
from services.common.errors import InvalidInput, ModelNotFound
from services.common.interceptor import CallInfo, current_call, label_model, received_bytes, status_of
from services.common.lifecycle import Lifecycle
from services.common.model import Parameter, TensorSpec
from services.common.repository import VersionPolicy
from services.common.settings import ServiceSettings
from services.common.versions import ModelRegistry, ModelVersions

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ("model_repository", "statistics")
INLINE_MAX_BYTES = ServiceSettings.model_fields["inline_max_bytes"].default
DATA_TYPES = {
    "BOOL": config_pb.TYPE_BOOL,
    "UINT8": config_pb.TYPE_UINT8,
    "UINT16": config_pb.TYPE_UINT16,
    "UINT32": config_pb.TYPE_UINT32,
    "UINT64": config_pb.TYPE_UINT64,
    "INT8": config_pb.TYPE_INT8,
    "INT16": config_pb.TYPE_INT16,
    "INT32": config_pb.TYPE_INT32,
    "INT64": config_pb.TYPE_INT64,
    "FP16": config_pb.TYPE_FP16,
    "FP32": config_pb.TYPE_FP32,
    "FP64": config_pb.TYPE_FP64,
    "BYTES": config_pb.TYPE_STRING,
    "BF16": config_pb.TYPE_BF16,
}
"""v2 datatype -> Triton's model-configuration DataType (BYTES is TYPE_STRING there)."""


def parameter_value(parameter: pb.InferParameter | pb.ModelRepositoryParameter) -> Parameter | bytes:
    """Return the Python value of a v2 parameter's oneof.

    Raises:
        InvalidInput: the parameter has no value set.
    """
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidInput("a parameter has no value set", field="parameters")
    return getattr(parameter, which)


def set_parameter(key: str, value: object, parameter: pb.InferParameter) -> None:
    """Set a v2 parameter's oneof from a Python value.

    Raises:
        InvalidInput: the value is not a bool, a 64-bit integer, a float or a string.
    """
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        raise InvalidInput(f"parameter '{key}' must be a boolean, a 64-bit integer, a number or a string")


def _version_parameter(parameters) -> str:
    if "version" not in parameters:
        return ""
    value = parameter_value(parameters["version"])
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(
            f"parameter 'version' must be a string or an integer, got {value!r}", field="parameters.version"
        )
    return str(value)


def _version_policy(policy: VersionPolicy) -> config_pb.ModelVersionPolicy:
    if policy.kind == "all":
        return config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All())
    if policy.kind == "specific":
        specific = config_pb.ModelVersionPolicy.Specific(versions=[int(v) for v in policy.versions])
        return config_pb.ModelVersionPolicy(specific=specific)
    return config_pb.ModelVersionPolicy(latest=config_pb.ModelVersionPolicy.Latest(num_versions=policy.count))


def model_config(model: ModelVersions, version: str = "") -> config_pb.ModelConfig:
    """Triton's model configuration of `model`: what it declares of its tensors, batching and versions.

    With a batch dimension (max_batch_size > 0) the dims leave out the first dimension, as Triton's do.

    Args:
        model: the served model.
        version: the version asked about ("": the default); its platform is reported.

    Returns:
        Its `inference.ModelConfig`.
    """
    limits = model.batch_limits()
    skip = 1 if limits.max_batch_size else 0

    def dims(spec: TensorSpec) -> list[int]:
        return list(spec.shape[skip:])

    config = config_pb.ModelConfig(
        name=model.name,
        platform=model.platform_of(version),
        version_policy=_version_policy(model.policy),
        max_batch_size=limits.max_batch_size,
        input=[
            config_pb.ModelInput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=dims(s), optional=s.optional)
            for s in model.inputs
        ],
        output=[
            config_pb.ModelOutput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=dims(s)) for s in model.outputs
        ],
    )
    if limits.dynamic:
        delay = round(limits.max_queue_delay_ms * 1000)
        config.dynamic_batching.CopyFrom(config_pb.ModelDynamicBatching(max_queue_delay_microseconds=delay))
    return config


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` over a `ModelRegistry`."""

    def __init__(
        self,
        models: ModelRegistry,
        lifecycle: Lifecycle,
        server_name: str = "maas",
        inline_max_bytes: int = INLINE_MAX_BYTES,
    ) -> None:
        """Serve `models`.

        Args:
            models: the models served.
            lifecycle: the server's lifecycle (readiness).
            server_name: the name ServerMetadata gives.
            inline_max_bytes: requests of at most this many bytes are decoded on the event loop; larger
                ones on a worker thread.
        """
        self._models = models
        self._inline_max_bytes = inline_max_bytes
        self._lifecycle = lifecycle
        self._server_name = server_name
        self._server_version = package_version("maas")

    def _model(self, name: str) -> ModelVersions:
        model = self._models.get(name)
        label_model(name)
        return model

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        return pb.ServerReadyResponse(ready=self._lifecycle.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        model = self._model(request.name)
        return pb.ModelReadyResponse(ready=self._lifecycle.ready and model.is_ready(request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(name=self._server_name, version=self._server_version, extensions=EXTENSIONS)

    def _model_version(self, name: str, version: str) -> tuple[ModelVersions, list[str]]:
        """The model called `name` and every version it knows, checking `version` ("" = any) is one.

        Raises:
            ModelNotFound: no such model, or no such version of it.
        """
        model = self._model(name)
        versions = [v.version for v in model.index()]
        if version and version not in versions:
            raise ModelNotFound(f"model '{model.name}' has no version '{version}'; versions: {versions}")
        return model, versions

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        model, versions = self._model_version(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=versions,
            platform=model.platform_of(request.version),
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in model.inputs
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in model.outputs
            ],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext):
        model, _ = self._model_version(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(model, request.version))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for response in stream_infer(request_iterator, self._infer):
            yield response

    async def _infer(self, request: pb.ModelInferRequest) -> InferReply:
        model = self._model(request.model_name)
        loaded = model.get(request.model_version)
        stats = loaded.stats
        started = time.perf_counter_ns()
        stats.in_flight += 1
        try:
            if loaded.admit is not None:
                loaded.admit()
            inputs = await offload.run(partial(decode_inputs, request), received_bytes(request), self._inline_max_bytes)
            model.check_inputs(inputs)
            parameters = {key: parameter_value(value) for key, value in request.parameters.items()}
            decoded = time.perf_counter_ns()
            result = await loaded.infer(inputs, parameters)
            inferred = time.perf_counter_ns()
            outputs = result.outputs
            if request.outputs:
                produced = {tensor.name: tensor for tensor in outputs}
                wanted = [o.name for o in request.outputs]
                missing = [name for name in wanted if name not in produced]
                if missing:
                    raise InvalidInput(
                        f"model '{model.name}' has no output {', '.join(missing)}; outputs: {', '.join(produced)}",
                        field="outputs",
                    )
                outputs = [produced[name] for name in wanted]
            head = pb.ModelInferResponse(model_name=model.name, model_version=loaded.version, id=request.id)
            response = infer_reply(head, outputs)
        except BaseException:
            stats.record_request(False, time.perf_counter_ns() - started, 0)
            raise
        finally:
            stats.in_flight -= 1
        done = time.perf_counter_ns()
        if not result.batched:
            stats.record_execution(result.batch_size, inferred - decoded)
            stats.record_compute(0, inferred - decoded)
            timing.record(0, 0, inferred - decoded, result.batch_size)
        stats.record_request(True, done - started, result.batch_size, decoded - started, done - inferred)
        return response

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext):
        models = [self._model(request.name)] if request.name else list(self._models)
        response = pb.ModelStatisticsResponse()
        for model in models:
            versions = [v.version for v in model.index()]
            if request.version:
                if request.version not in versions:
                    raise ModelNotFound(f"model '{model.name}' has no version '{request.version}'")
                versions = [request.version]
            response.model_stats.extend(model.version_stats(v).to_proto(model.name, v) for v in versions)
        return response

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext):
        response = pb.RepositoryIndexResponse()
        for model in self._models:
            for entry in model.index():
                if request.ready and entry.state != "READY":
                    continue
                response.models.add(name=model.name, version=entry.version, state=entry.state, reason=entry.reason)
        return response

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext):
        model = self._model(request.model_name)
        await model.load(_version_parameter(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext):
        model = self._model(request.model_name)
        await model.unload(_version_parameter(request.parameters))
        return pb.RepositoryModelUnloadResponse()


async def stream_infer(
    requests: AsyncIterator[pb.ModelInferRequest],
    infer: Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse | InferReply]],
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """ModelStreamInfer over a unary infer: one response per request, in order. A failed request is an
    `error_message` on its response (details as the interceptor would send them) and the stream goes
    on, as Triton does; so is a message that is not a valid request at all, when `requests` raises
    InvalidInput for it and then goes on (as `ParsedStream` does).

    Args:
        requests: the stream's requests.
        infer: answers one request.

    Yields:
        One stream response per request.
    """
    call = current_call() or CallInfo(method="ModelStreamInfer", request_id="-")
    messages = aiter(requests)
    while True:
        try:
            request = await anext(messages)
        except StopAsyncIteration:
            return
        except InvalidInput as exc:
            yield pb.ModelStreamInferResponse(error_message=status_of(exc, call)[1])
            continue
        try:
            response = await infer(request)
        except Exception as exc:
            _code, details = status_of(exc, call)
            yield pb.ModelStreamInferResponse(
                error_message=details,
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
            )
            continue
        yield pb.ModelStreamInferResponse(infer_response=as_message(response))
