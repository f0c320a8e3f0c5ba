"""The training recipe of the review LSTM, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights. The defaults are the recipe `make up` trains."""

    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    embedding: int = 64
    hidden: int = 64
    dropout: float = 0.4
    min_count: int = 2
    validation_fraction: float = 0.1
    max_length: int = 256
    clip_norm: float = 1.0
    seed: int = 0
    train_limit: int = 0
    test_limit: int = 0

    def hyperparameters(self, vocab_size: int, rows: int) -> dict:
        """The architecture's constructor arguments for a tokenizer vocabulary and embedding rows."""
        return {
            "vocab_size": vocab_size,
            "rows": rows,
            "embedding": self.embedding,
            "hidden": self.hidden,
            "dropout": self.dropout,
        }
