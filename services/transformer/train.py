"""`maas train transformer`: a sentiment head over MiniLM embeddings, trained on the fine-food reviews."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from services.common.repository import (
    TensorConfig,
    VersionConfig,
    newest_source,
    publish_quantized,
    publish_version,
    read_version,
)
from services.common.reviews import LABELS, MAJORITY_BASELINE, SOURCE, review_splits, reviews
from services.common.sequences import SEQUENCE_INPUTS
from services.common.torch_weights import load_weights, quantize, save_weights
from services.tokenizer.model import DEFAULT_MAX_LENGTH, WordPieceTokenizer, newest_tokenizer
from services.transformer.model import (
    HEAD_ARCHITECTURE,
    HEAD_FILE,
    WEIGHTS_FILE,
    Encoder,
    PackedEncoder,
    SentimentHead,
)
from services.transformer.spec import EMBED_MODEL, EMBEDDING_SIZE, PLATFORM, SENTIMENT_MODEL, SENTIMENT_OUTPUTS

SERVING_CHECK = 200


@dataclass(frozen=True)
class Recipe:
    """The head's training recipe. The defaults are what `make up` trains."""

    regularization_grid: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    validation_fraction: float = 0.2
    max_iterations: int = 500
    seed: int = 0
    train_limit: int = 0
    test_limit: int = 0
    embed_batch: int = 32


def embed_texts(
    encoder: Encoder, tokenizer: WordPieceTokenizer, texts: list[str], batch: int, progress: bool
) -> np.ndarray:
    """Sentence embeddings of `texts`, computed in length-sorted batches (less padding)."""
    ids, mask, _ = tokenizer.encode_arrays(texts, max_length=DEFAULT_MAX_LENGTH)
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    embeddings = np.empty((len(texts), EMBEDDING_SIZE), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch), desc="embedding", disable=not progress, unit="batch"):
        index = order[start : start + batch]
        width = int(lengths[index].max())
        embeddings[index] = encoder.embed(ids[index, :width], mask[index, :width])
    return embeddings


def fit_head(
    embeddings: np.ndarray, labels: np.ndarray, inverse_regularization: float, recipe: Recipe
) -> SentimentHead:
    """L2-regularised logistic regression over the embeddings, solved with full-batch L-BFGS.

    Minimises mean cross-entropy + ||W||^2 / (2 C n), the objective of scikit-learn's
    LogisticRegression(C) (bias unpenalised).
    """
    torch.manual_seed(recipe.seed)
    head = SentimentHead(len(LABELS))
    x, y = torch.from_numpy(embeddings), torch.from_numpy(labels)
    penalty = 1.0 / (2 * inverse_regularization * len(labels))
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=recipe.max_iterations, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(head(x), y) + penalty * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return head.eval()


def choose_regularization(embeddings: np.ndarray, labels: np.ndarray, recipe: Recipe) -> float:
    """The C of the grid that scores best on a seeded validation split of the training data."""
    order = np.random.default_rng(recipe.seed).permutation(len(labels))
    cut = int(len(labels) * (1 - recipe.validation_fraction))
    fit, held = order[:cut], order[cut:]
    scores = {
        c: accuracy(fit_head(embeddings[fit], labels[fit], c, recipe), embeddings[held], labels[held])
        for c in recipe.regularization_grid
    }
    return max(scores, key=scores.get)


def accuracy(head: SentimentHead, embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the head."""
    with torch.inference_mode():
        return float((head(torch.from_numpy(embeddings)).argmax(1).numpy() == labels).mean())


def newest_encoder(repository: Path) -> Path:
    """The newest fp32 torch `minilm_embed` version directory (heads are fitted on fp32 embeddings).

    Raises:
        FileNotFoundError: there is none.
    """
    return newest_source(repository, EMBED_MODEL, "run `maas models export-minilm`")


def train(recipe: Recipe, repository: Path, progress: bool = True) -> Path:
    """Embed the reviews with the newest `minilm_embed`, fit the head, evaluate it on the 1,000 test
    reviews, and publish it as the next `minilm_sentiment` version.

    Raises:
        FileNotFoundError: the repository has no tokenizer or no `minilm_embed` version.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = newest_tokenizer(repository)
    encoder_dir = newest_encoder(repository)
    encoder_version = encoder_dir.name
    encoder = Encoder(encoder_dir, read_version(encoder_dir, EMBED_MODEL).architecture["bert"])
    train_texts, train_labels, test_texts, test_labels = review_splits(recipe.train_limit, recipe.test_limit)
    started = time.perf_counter()
    train_embeddings = embed_texts(encoder, tokenizer, train_texts, recipe.embed_batch, progress)
    test_embeddings = embed_texts(encoder, tokenizer, test_texts, recipe.embed_batch, progress)
    inverse_regularization = choose_regularization(train_embeddings, train_labels, recipe)
    head = fit_head(train_embeddings, train_labels, inverse_regularization, recipe)
    seconds = time.perf_counter() - started
    config = VersionConfig(
        name=SENTIMENT_MODEL,
        version=1,
        platform=PLATFORM,
        architecture={"name": HEAD_ARCHITECTURE, "encoder": f"{EMBED_MODEL}/{encoder_version}"},
        inputs=[TensorConfig.of(spec) for spec in SEQUENCE_INPUTS],
        outputs=[TensorConfig.of(spec) for spec in SENTIMENT_OUTPUTS],
        labels=list(LABELS),
        metrics={
            "test_accuracy": accuracy(head, test_embeddings, test_labels),
            f"test_accuracy_first_{SERVING_CHECK}": accuracy(
                head, test_embeddings[:SERVING_CHECK], test_labels[:SERVING_CHECK]
            ),
            "train_accuracy": accuracy(head, train_embeddings, train_labels),
            "majority_baseline": MAJORITY_BASELINE,
            "train_seconds": round(seconds, 1),
            "test_examples": len(test_labels),
        },
        data={
            "source": SOURCE,
            "train_examples": len(train_labels),
            "labels": "score: great vs other",
            "max_length": DEFAULT_MAX_LENGTH,
            "inverse_regularization": inverse_regularization,
            "recipe": asdict(recipe),
        },
        files={HEAD_FILE: ""},
    )
    return publish_version(repository, config, lambda directory: save_weights(head, directory / HEAD_FILE))


def _test_reviews(limit: int) -> tuple[list[str], np.ndarray]:
    texts, labels = reviews("testing_data")
    return (texts[:limit], labels[:limit]) if limit else (texts, labels)


def quantize_sentiment(repository: Path, scheme: str, test_limit: int = 0, progress: bool = True) -> Path:
    """Publish the newest unquantized `minilm_sentiment` again, its encoder and head quantized by
    `scheme` at load, with the quantized model's accuracy on the test reviews.

    Raises:
        FileNotFoundError: no tokenizer, or no unquantized `minilm_sentiment`.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = newest_tokenizer(repository)
    texts, labels = _test_reviews(test_limit)

    def measure(directory: Path, config: VersionConfig) -> tuple[dict, dict]:
        encoder_dir = repository / config.architecture["encoder"]
        encoder = Encoder(encoder_dir, read_version(encoder_dir, EMBED_MODEL).architecture["bert"], scheme)
        head = quantize(load_weights(SentimentHead(len(config.labels)), directory / HEAD_FILE), scheme)
        embeddings = embed_texts(encoder, tokenizer, texts, Recipe.embed_batch, progress)
        metrics = {
            "test_accuracy": accuracy(head, embeddings, labels),
            f"test_accuracy_first_{SERVING_CHECK}": accuracy(head, embeddings[:SERVING_CHECK], labels[:SERVING_CHECK]),
            "fp32_test_accuracy": config.metrics["test_accuracy"],
            "majority_baseline": MAJORITY_BASELINE,
            "test_examples": len(labels),
        }
        return metrics, {"quantized_layers": "every Linear of the encoder and the head"}

    return publish_quantized(repository, SENTIMENT_MODEL, scheme, measure)


def quantize_embed(repository: Path, scheme: str, test_limit: int = SERVING_CHECK, progress: bool = True) -> Path:
    """Publish the newest unquantized `minilm_embed` again, quantized by `scheme` at load, with the
    cosine between its embeddings and the fp32 ones of the first `test_limit` test reviews.

    Raises:
        FileNotFoundError: no tokenizer, or no unquantized `minilm_embed`.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = newest_tokenizer(repository)
    texts, _ = _test_reviews(test_limit)

    def measure(directory: Path, config: VersionConfig) -> tuple[dict, dict]:
        bert = config.architecture["bert"]
        exact = embed_texts(Encoder(directory, bert), tokenizer, texts, Recipe.embed_batch, progress)
        quantized = embed_texts(Encoder(directory, bert, scheme), tokenizer, texts, Recipe.embed_batch, progress)
        cosines = (exact * quantized).sum(axis=1)
        metrics = {"cosine_to_fp32_mean": float(cosines.mean()), "cosine_to_fp32_min": float(cosines.min())}
        return metrics, {"quantized_layers": "every Linear of the encoder", "parity_examples": len(texts)}

    return publish_quantized(repository, EMBED_MODEL, scheme, measure)


class EmbeddingGraph(nn.Module):
    """MiniLM as exported: INPUT_IDS and ATTENTION_MASK in, the masked mean of the last hidden states,
    L2-normalised, out. It runs the packed encoder's own modules over the padded batch (padding keys
    masked out of attention): one graph with dynamic batch and sequence axes, no Python per sequence."""

    def __init__(self, encoder: PackedEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings [N, 384]."""
        embeddings = self.encoder.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        summed = (
            embeddings.word_embeddings(input_ids)
            + embeddings.position_embeddings(positions)
            + embeddings.token_type_embeddings.weight[0]
        )
        hidden = embeddings.LayerNorm(summed)
        keys = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layers:
            hidden = _padded_layer(layer, hidden, keys)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        means = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return nn.functional.normalize(means, p=2, dim=1)


def _padded_layer(layer: nn.Module, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """One packed-encoder layer over a padded batch [N, L, hidden], attending only to `keys` [N, 1, 1, L]."""
    batch, length, width = hidden.shape
    head_size = width // layer.heads
    query, key, value = layer.qkv(hidden).view(batch, length, 3, layer.heads, head_size).permute(2, 0, 3, 1, 4)
    context = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=keys)
    context = context.transpose(1, 2).reshape(batch, length, width)
    hidden = layer.attention_norm(layer.attention_output(context) + hidden)
    return layer.output_norm(layer.output(layer.activation(layer.intermediate(hidden))) + hidden)


class SentimentGraph(nn.Module):
    """The sentiment model as exported: the embedding graph and the head, softmax probabilities out."""

    def __init__(self, embedding: EmbeddingGraph, head: SentimentHead) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, classes]."""
        return torch.softmax(self.head(self.embedding(input_ids, attention_mask)), dim=1)


SEQUENCE_AXES = {"INPUT_IDS": {0: "batch", 1: "sequence"}, "ATTENTION_MASK": {0: "batch", 1: "sequence"}}


def _parity_batches(repository: Path, test_limit: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The first `test_limit` test reviews (0: all) tokenized as requests of 32, and their labels."""
    texts, labels = _test_reviews(test_limit)
    ids, mask, _ = newest_tokenizer(repository).encode_arrays(texts, max_length=DEFAULT_MAX_LENGTH)
    batches = [
        {"INPUT_IDS": ids[start : start + 32], "ATTENTION_MASK": mask[start : start + 32]}
        for start in range(0, len(texts), 32)
    ]
    return batches, labels


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(1000, 2000, (3, 12), dtype=torch.int64), torch.ones(3, 12, dtype=torch.int64)


def export_embed_onnx(repository: Path, version: int | None = None, test_limit: int = SERVING_CHECK) -> Path:
    """Export a published `minilm_embed` (`version`, or the newest fp32 torch one) to ONNX and publish it as
    the next version on ONNX Runtime, with the cosine and largest difference between its embeddings and
    the source's on the first `test_limit` test reviews.

    Raises:
        FileNotFoundError: no tokenizer, no such version, or none to export.
        ValueError: `version` is not an fp32 torch version.
    """
    from services.common.onnx_export import Evaluation, publish_onnx, source_directory
    from services.transformer.model import Embedder
    from services.transformer.spec import TransformerSettings

    torch.set_num_threads(os.cpu_count() or 1)
    source = source_directory(repository, EMBED_MODEL, version)
    encoder = PackedEncoder.load(read_version(source, EMBED_MODEL).architecture["bert"], source / WEIGHTS_FILE)
    batches, _ = _parity_batches(repository, test_limit)
    return publish_onnx(
        repository,
        Embedder,
        TransformerSettings(model_repository=repository),
        source,
        EmbeddingGraph(encoder),
        _example(),
        SEQUENCE_AXES,
        Evaluation(batches, None, "EMBEDDING", cosine=True),
    )


def export_sentiment_onnx(repository: Path, version: int | None = None, test_limit: int = SERVING_CHECK) -> Path:
    """Export a published `minilm_sentiment` (`version`, or the newest fp32 torch one) with its encoder to one
    ONNX graph and publish it as the next version on ONNX Runtime, with its parity and accuracy on the
    first `test_limit` test reviews.

    Raises:
        FileNotFoundError: no tokenizer, no such version, or none to export.
        ValueError: `version` is not an fp32 torch version.
    """
    from services.common.onnx_export import Evaluation, publish_onnx, source_directory
    from services.transformer.model import SentimentClassifier
    from services.transformer.spec import TransformerSettings

    torch.set_num_threads(os.cpu_count() or 1)
    source = source_directory(repository, SENTIMENT_MODEL, version)
    config = read_version(source, SENTIMENT_MODEL)
    encoder_dir = repository / config.architecture["encoder"]
    bert_config = read_version(encoder_dir, EMBED_MODEL).architecture["bert"]
    encoder = PackedEncoder.load(bert_config, encoder_dir / WEIGHTS_FILE)
    head = load_weights(SentimentHead(len(config.labels)), source / HEAD_FILE)
    batches, labels = _parity_batches(repository, test_limit)
    return publish_onnx(
        repository,
        SentimentClassifier,
        TransformerSettings(model_repository=repository),
        source,
        SentimentGraph(EmbeddingGraph(encoder), head),
        _example(),
        SEQUENCE_AXES,
        Evaluation(batches, labels, "PROBABILITIES"),
        architecture={**config.architecture, "bert": bert_config},
    )
