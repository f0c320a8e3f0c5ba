"""`maas train text`: the review LSTM, trained here on the fine-food reviews over WordPiece ids."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from services.common.repository import TensorConfig, VersionConfig, publish_quantized, publish_version, read_version
from services.common.reviews import LABELS, MAJORITY_BASELINE, SOURCE, review_splits, reviews
from services.common.torch_weights import save_weights
from services.text.model import ARCHITECTURE, PAD_ROW, UNKNOWN_ROW, WEIGHTS_FILE, TorchLSTM, build
from services.text.recipe import Recipe
from services.text.spec import INPUTS, MODEL_NAME, OUTPUTS, PLATFORM
from services.tokenizer.model import WordPieceTokenizer, newest_tokenizer

SERVING_CHECK = 200
BUCKET_BATCHES = 32


def encoded(tokenizer: WordPieceTokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [N, L] and lengths [N] of `texts`."""
    ids, mask, _ = tokenizer.encode_arrays(texts, max_length=max_length)
    return ids, mask.sum(axis=1)


def id_table(ids: np.ndarray, lengths: np.ndarray, vocab_size: int, min_count: int) -> tuple[np.ndarray, int]:
    """Map tokenizer ids to embedding rows: each id seen `min_count` times in training gets its own.

    Returns:
        The lookup [vocab_size] (0 for [PAD], 1 for ids without a row) and the number of rows.
    """
    tokens = ids[np.arange(ids.shape[1]) < lengths[:, None]]
    seen, counts = np.unique(tokens, return_counts=True)
    kept = seen[(counts >= min_count) & (seen != 0)]
    table = np.full(vocab_size, UNKNOWN_ROW, dtype=np.int64)
    table[0] = PAD_ROW
    table[kept] = np.arange(2, 2 + len(kept))
    return table, 2 + len(kept)


def batches(lengths: np.ndarray, size: int, generator: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths (less padding): sorted within shuffled buckets."""
    order = generator.permutation(len(lengths))
    bucket = size * BUCKET_BATCHES
    chunks = []
    for start in range(0, len(order), bucket):
        part = order[start : start + bucket]
        part = part[np.argsort(lengths[part], kind="stable")]
        chunks += [part[i : i + size] for i in range(0, len(part), size)]
    return [chunks[i] for i in generator.permutation(len(chunks))]


def predict(network: nn.Module, ids: np.ndarray, lengths: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Predicted class per row, computed in length-sorted batches."""
    network.eval()
    predictions = np.empty(len(lengths), dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            width = int(lengths[index].max())
            logits = network(torch.from_numpy(ids[index, :width]), torch.from_numpy(lengths[index]))
            predictions[index] = logits.argmax(1).numpy()
    return predictions


def train(recipe: Recipe, repository: Path, progress: bool = True) -> Path:
    """Train the LSTM, pick the epoch that scores best on a held-out part of the training reviews,
    evaluate it on the 1,000 test reviews, and publish it as the next `review_lstm` version.

    Args:
        recipe: hyperparameters and seed; `train_limit`/`test_limit` > 0 use that many reviews only.
        repository: model repository root (its newest tokenizer makes the ids).
        progress: show a progress bar on stderr.

    Returns:
        The new version's directory.

    Raises:
        FileNotFoundError: the repository has no tokenizer.
    """
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(1)
    generator = np.random.default_rng(recipe.seed)
    tokenizer = newest_tokenizer(repository)
    train_texts, train_labels, test_texts, test_labels = review_splits(recipe.train_limit, recipe.test_limit)
    ids, lengths = encoded(tokenizer, train_texts, recipe.max_length)
    test_ids, test_lengths = encoded(tokenizer, test_texts, recipe.max_length)
    order = generator.permutation(len(train_labels))
    cut = len(order) - max(1, int(len(order) * recipe.validation_fraction))
    fit, held = order[:cut], order[cut:]
    table, rows = id_table(ids[fit], lengths[fit], tokenizer.vocab_size, recipe.min_count)
    hyperparameters = recipe.hyperparameters(tokenizer.vocab_size, rows)
    network = build(hyperparameters)
    network.id_to_row.copy_(torch.from_numpy(table))
    optimizer = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    best: tuple[float, int, dict] = (-1.0, 0, {})
    started = time.perf_counter()
    for epoch in range(recipe.epochs):
        network.train()
        plan = batches(lengths[fit], recipe.batch_size, generator)
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress, unit="batch")
        for batch in bar:
            index = fit[batch]
            width = int(lengths[index].max())
            logits = network(torch.from_numpy(ids[index, :width]), torch.from_numpy(lengths[index]))
            loss = loss_fn(logits, torch.from_numpy(train_labels[index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(network.parameters(), recipe.clip_norm)
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        score = accuracy(predict(network, ids[held], lengths[held]), train_labels[held])
        if score > best[0]:
            best = (score, epoch + 1, copy.deepcopy(network.state_dict()))
    seconds = time.perf_counter() - started
    network.load_state_dict(best[2])
    test_predictions = predict(network, test_ids, test_lengths)
    config = VersionConfig(
        name=MODEL_NAME,
        version=1,
        platform=PLATFORM,
        architecture={"name": ARCHITECTURE, "hyperparameters": hyperparameters},
        inputs=[TensorConfig.of(spec) for spec in INPUTS],
        outputs=[TensorConfig.of(spec) for spec in OUTPUTS],
        labels=list(LABELS),
        metrics={
            **test_metrics(test_predictions, test_labels),
            "validation_accuracy": best[0],
            "best_epoch": best[1],
            "majority_baseline": MAJORITY_BASELINE,
            "train_seconds": round(seconds, 1),
        },
        data={
            "source": SOURCE,
            "train_examples": len(fit),
            "validation_examples": len(held),
            "labels": "score: great vs other",
            "ids": f"WordPiece ids of tokenizer/{tokenizer.directory.name}, max_length "
            f"{recipe.max_length}; {rows - 2} ids seen at least {recipe.min_count} times have their own row",
            "recipe": asdict(recipe),
            "torch": torch.__version__,
        },
        files={WEIGHTS_FILE: ""},
    )
    return publish_version(repository, config, lambda directory: save_weights(network, directory / WEIGHTS_FILE))


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of predictions equal to the labels."""
    return float((predictions == labels).mean())


def test_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Test accuracy on every test review and on the first SERVING_CHECK (re-scored through gRPC)."""
    return {
        "test_accuracy": accuracy(predictions, labels),
        f"test_accuracy_first_{SERVING_CHECK}": accuracy(predictions[:SERVING_CHECK], labels[:SERVING_CHECK]),
        "test_examples": len(labels),
    }


def quantize_version(repository: Path, scheme: str, test_limit: int = 0) -> Path:
    """Publish the newest unquantized `review_lstm` again, quantized by `scheme` at load, with the
    quantized model's accuracy on the test reviews beside the fp32 one.

    Raises:
        FileNotFoundError: no tokenizer, or no unquantized `review_lstm`.
    """
    torch.set_num_threads(1)
    tokenizer = newest_tokenizer(repository)
    texts, labels = reviews("testing_data")
    if test_limit:
        texts, labels = texts[:test_limit], labels[:test_limit]

    def measure(directory: Path, config: VersionConfig) -> tuple[dict, dict]:
        hyperparameters = config.architecture["hyperparameters"]
        ids, lengths = encoded(tokenizer, texts, config.data["recipe"]["max_length"])
        exact = predict(TorchLSTM(directory, hyperparameters).network, ids, lengths)
        quantized = predict(TorchLSTM(directory, hyperparameters, scheme).network, ids, lengths)
        metrics = {
            **test_metrics(quantized, labels),
            "fp32_test_accuracy": accuracy(exact, labels),
            "agreement_with_fp32": accuracy(quantized, exact),
            "majority_baseline": MAJORITY_BASELINE,
        }
        return metrics, {"quantized_layers": "both LSTMs and the classifier (Linear); the embedding stays fp32"}

    return publish_quantized(repository, MODEL_NAME, scheme, measure)


class ProbabilitiesGraph(nn.Module):
    """The LSTM as exported: right-padded INPUT_IDS and ATTENTION_MASK in, PROBABILITIES out."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities [N, classes]."""
        return torch.softmax(self.network(input_ids, attention_mask.sum(dim=1)), dim=1)


def export_onnx(repository: Path, version: int | None = None, test_limit: int = 0) -> Path:
    """Export a published LSTM (`version`, or the newest fp32 torch one) to ONNX and publish it as the next
    version on ONNX Runtime, with its parity and accuracy on the test reviews.

    Args:
        repository: model repository root (its newest tokenizer makes the ids).
        version: the version to export; None: the newest fp32 torch version.
        test_limit: measure on this many test reviews only (0: all 1,000).

    Returns:
        The new version's directory.

    Raises:
        FileNotFoundError: no tokenizer, no such version, or none to export.
        ValueError: `version` is not an fp32 torch version.
    """
    from services.common.onnx_export import Evaluation, publish_onnx, source_directory
    from services.text.model import Classifier
    from services.text.spec import TextSettings

    torch.set_num_threads(1)
    source = source_directory(repository, MODEL_NAME, version)
    config = read_version(source, MODEL_NAME)
    network = TorchLSTM(source, config.architecture["hyperparameters"]).network
    texts, labels = reviews("testing_data")
    if test_limit:
        texts, labels = texts[:test_limit], labels[:test_limit]
    ids, mask, _ = newest_tokenizer(repository).encode_arrays(texts, max_length=config.data["recipe"]["max_length"])
    batches = [
        {"INPUT_IDS": ids[start : start + 64], "ATTENTION_MASK": mask[start : start + 64]}
        for start in range(0, len(texts), 64)
    ]
    example = (torch.from_numpy(ids[:3, :16]), torch.ones(3, 16, dtype=torch.int64))
    return publish_onnx(
        repository,
        Classifier,
        TextSettings(model_repository=repository),
        source,
        ProbabilitiesGraph(network),
        example,
        {"INPUT_IDS": {0: "batch", 1: "sequence"}, "ATTENTION_MASK": {0: "batch", 1: "sequence"}},
        Evaluation(batches, np.asarray(labels), "PROBABILITIES"),
    )
