"""Pipeline models: v2 models of the gateway that take TEXT and run tokenizer -> model downstream.

Each pipeline is declared in the spec of the service whose model it ends at; one is served only when
the routing file routes both the tokenizer and its model. Request parameters: `max_length` goes to the
tokenizer, `model_version` pins the model's version.
"""

from __future__ import annotations

from functools import partial

from services.catalog import SERVICES
from services.common.codec import Tensor
from services.common.errors import InvalidInput
from services.common.model import Parameters, TensorSpec
from services.common.spec import Pipeline
from services.common.versions import FixedVersions, InferResult, ModelVersions
from services.gateway.router import TOKENIZER, Router

PLATFORM = "maas_pipeline"
TEXT_INPUT = TensorSpec("TEXT", "BYTES", (-1,))
PIPELINES: dict[str, Pipeline] = {p.name: p for spec in SERVICES.values() for p in spec.pipelines}


async def run_pipeline(
    pipeline: Pipeline, router: Router, inputs: dict[str, Tensor], parameters: Parameters
) -> InferResult:
    """Tokenize TEXT, then run the pipeline's model on the ids.

    Raises:
        InvalidInput: a parameter has the wrong type, or TEXT is empty.
        DownstreamError: the tokenizer or the model refused (status unchanged).
    """
    texts = inputs["TEXT"].array
    if texts.size == 0:
        raise InvalidInput("TEXT holds no texts", field="inputs[TEXT]")
    max_length = parameters.get("max_length")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
        raise InvalidInput(
            f"parameter 'max_length' must be an integer, got {max_length!r}", field="parameters.max_length"
        )
    version = parameters.get("model_version", "")
    if not isinstance(version, str | int) or isinstance(version, bool):
        raise InvalidInput(
            f"parameter 'model_version' must be a string or an integer, got {version!r}",
            field="parameters.model_version",
        )
    ids, mask = await router.tokenize(texts, max_length)
    outputs = await router.infer(
        pipeline.model, [Tensor("INPUT_IDS", "INT64", ids), Tensor("ATTENTION_MASK", "INT64", mask)], str(version)
    )
    return InferResult(outputs=[outputs[pipeline.output.name]], batch_size=len(texts))


def pipeline_model(pipeline: Pipeline, router: Router) -> ModelVersions:
    """v2 model `<pipeline>`: TEXT BYTES [N] -> the model's output, one version ("1")."""
    loader = FixedVersions(["1"], partial(run_pipeline, pipeline, router))
    return ModelVersions(pipeline.name, PLATFORM, (TEXT_INPUT,), (pipeline.output,), loader)


def ready_parts(pipeline: Pipeline) -> tuple[str, str]:
    """The two models that must be ready for a pipeline to be."""
    return TOKENIZER, pipeline.model
