"""Pipeline models: v2 models of the gateway that take TEXT and run tokenizer -> model downstream.

A pipeline is served only when the routing file routes both the tokenizer and its model. Request
parameters: `max_length` goes to the tokenizer, `model_version` pins the model's version.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.codec import Tensor
from services.common.errors import InvalidInput
from services.common.models import InferRequest, InferResult, TensorSpec, VersionedModel
from services.gateway.router import TOKENIZER, Router

PLATFORM = "maas_pipeline"
TEXT_INPUT = TensorSpec("TEXT", "BYTES", (-1,))
PROBABILITIES = TensorSpec("PROBABILITIES", "FP32", (-1, 2))
EMBEDDING = TensorSpec("EMBEDDING", "FP32", (-1, 384))


@dataclass(frozen=True)
class Pipeline:
    """A pipeline model: its name, the model it runs after the tokenizer, and that model's output."""

    name: str
    model: str
    output: TensorSpec


LSTM_SENTIMENT = Pipeline("review_sentiment_lstm", "review_lstm", PROBABILITIES)
MINILM_SENTIMENT = Pipeline("review_sentiment_minilm", "minilm_sentiment", PROBABILITIES)
TEXT_EMBED = Pipeline("text_embed", "minilm_embed", EMBEDDING)
PIPELINES = (LSTM_SENTIMENT, MINILM_SENTIMENT, TEXT_EMBED)


class PipelineModel(VersionedModel):
    """v2 model `<pipeline>`: TEXT BYTES [N] -> the model's output, one version ("1")."""

    platform = PLATFORM
    inputs = (TEXT_INPUT,)

    def __init__(self, pipeline: Pipeline, router: Router) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.name = pipeline.name
        self.outputs = (pipeline.output,)
        self._router = router

    def available_versions(self) -> list[str]:
        """The single version, "1"."""
        return ["1"]

    async def load_version(self, version: str) -> bool:
        """Nothing to load: the models run downstream."""
        return True

    async def warm_up(self, version: str) -> None:
        """Nothing to warm here: the models warm up in their services, and the gateway connects its
        channels to them before it reports SERVING."""

    async def infer(self, request: InferRequest) -> InferResult:
        """Tokenize TEXT, then run the pipeline's model on the ids.

        Raises:
            InvalidInput: a parameter has the wrong type, or TEXT is empty.
            DownstreamError: the tokenizer or the model refused (status unchanged).
        """
        texts = request.inputs["TEXT"].array
        if texts.size == 0:
            raise InvalidInput("TEXT holds no texts", field="inputs[TEXT]")
        max_length = request.parameters.get("max_length")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise InvalidInput(
                f"parameter 'max_length' must be an integer, got {max_length!r}", field="parameters.max_length"
            )
        version = request.parameters.get("model_version", "")
        if not isinstance(version, str | int) or isinstance(version, bool):
            raise InvalidInput(
                f"parameter 'model_version' must be a string or an integer, got {version!r}",
                field="parameters.model_version",
            )
        ids, mask = await self._router.tokenize(texts, max_length)
        outputs = await self._router.infer(
            self.pipeline.model,
            [Tensor("INPUT_IDS", "INT64", ids), Tensor("ATTENTION_MASK", "INT64", mask)],
            str(version),
        )
        wanted = self.pipeline.output.name
        return InferResult(outputs=[outputs[wanted]], version=request.version, batch_size=len(texts))

    def ready_parts(self) -> tuple[str, str]:
        """The two models that must be ready for this pipeline to be."""
        return TOKENIZER, self.pipeline.model
