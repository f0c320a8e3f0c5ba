"""The inputs the stock-client scripts send each model, as numpy arrays (no client library imported)."""

from __future__ import annotations

import numpy as np

REVIEWS = [b"Great taffy at a great price.", b"The candy is just red, no flavor. Never again!"]
IDS = np.array([[101, 2307, 11937, 16329, 102], [101, 2025, 2204, 102, 0]], dtype=np.int64)


def sample_inputs(model: str) -> tuple[list[tuple[str, np.ndarray, str]], str]:
    """The inputs of one model as (name, array, datatype), and the output to read back.

    Args:
        model: one of echo, tokenizer, fashion_cnn, minilm_embed, minilm_sentiment, review_lstm,
            text_embed, review_sentiment_minilm, review_sentiment_lstm.
    """
    texts = [("TEXT", np.array(REVIEWS, dtype=np.object_), "BYTES")]
    sequences = [("INPUT_IDS", IDS, "INT64"), ("ATTENTION_MASK", (IDS != 0).astype(np.int64), "INT64")]
    return {
        "echo": (texts, "TEXT"),
        "tokenizer": (texts, "INPUT_IDS"),
        "fashion_cnn": ([("IMAGE", np.full((2, 1, 28, 28), 0.5, dtype=np.float32), "FP32")], "PROBABILITIES"),
        "minilm_embed": (sequences, "EMBEDDING"),
        "minilm_sentiment": (sequences, "PROBABILITIES"),
        "review_lstm": (sequences, "PROBABILITIES"),
        "text_embed": (texts, "EMBEDDING"),
        "review_sentiment_minilm": (texts, "PROBABILITIES"),
        "review_sentiment_lstm": (texts, "PROBABILITIES"),
    }[model]
