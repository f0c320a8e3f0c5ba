"""The default sentiment head (trained by `make test`/`make up`) scores through gRPC what its config records."""

from __future__ import annotations

from services.common.repository import read_version, version_dirs
from services.common.server import build_server
from services.tokenizer.spec import SPEC as TOKENIZER
from services.tokenizer.spec import TokenizerSettings
from services.transformer.spec import SPEC as TRANSFORMER
from services.transformer.spec import TransformerSettings
from services.transformer.train import SERVING_CHECK, Recipe, reviews
from tests.integration.reviews import served_labels


async def test_served_head_reproduces_its_recorded_accuracy_on_the_check_subset():
    repository = TransformerSettings().model_repository
    versions = version_dirs(repository, "minilm_sentiment")
    assert versions, f"no minilm_sentiment in {repository}: `make test` trains it first"
    config = read_version(repository / "minilm_sentiment" / versions[-1], "minilm_sentiment")
    if config.data["recipe"] == Recipe().__dict__:
        assert config.metrics["test_accuracy"] >= config.metrics["majority_baseline"] + 0.10
    texts, labels = reviews("testing_data")
    texts, labels = texts[:SERVING_CHECK], labels[:SERVING_CHECK]
    tokenizer = build_server(TOKENIZER, TokenizerSettings(port=0, metrics_port=0, model_repository=repository))
    transformer = build_server(TRANSFORMER, TransformerSettings(port=0, metrics_port=0, model_repository=repository))
    await tokenizer.start()
    await transformer.start()
    try:
        version = str(config.version)
        predictions = (await served_labels(tokenizer, transformer, texts, "minilm_sentiment", [version]))[version]
    finally:
        await transformer.stop()
        await tokenizer.stop()
    served = float((predictions == labels).mean())
    recorded = config.metrics[f"test_accuracy_first_{SERVING_CHECK}"]
    assert abs(served - recorded) <= 0.005, f"served {served:.3f}, recorded {recorded:.3f}"
