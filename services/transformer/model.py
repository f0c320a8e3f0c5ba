"""all-MiniLM-L6-v2 sentence embeddings and the sentiment head over them. No gRPC, no Ray.

The encoder is transformers' `BertModel` built from the BERT config kept in the version's
config.json (data, not code) with weights from safetensors; sentence embeddings are the
attention-masked mean of the last hidden states, L2-normalised, as sentence-transformers computes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertModel

from services.common.torch_weights import CPU, load_weights, quantize, serving_device
from services.transformer.spec import EMBEDDING_SIZE

ENCODER_ARCHITECTURE = "bert_mean_pooling"
HEAD_ARCHITECTURE = "linear_head"
WEIGHTS_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"


def build_encoder(bert_config: dict) -> BertModel:
    """An untrained encoder of the given BERT shape (no pooler: sentence embeddings use mean pooling)."""
    return BertModel(BertConfig(**bert_config), add_pooling_layer=False).eval()


class Encoder:
    """A loaded encoder version: token ids in, sentence embeddings out."""

    def __init__(
        self, directory: Path, bert_config: dict, quantization: str | None = None, device: torch.device = CPU
    ) -> None:
        """Load the version's weights, quantized by `quantization` (a config's scheme) if given, onto
        `device` (a quantized encoder stays on the CPU).

        Args:
            directory: the version's directory.
            bert_config: the BERT shape, from the version's config.
            quantization: the quantization scheme, or None.
            device: where the weights live and batches run.

        Raises:
            RepositoryError: the weights do not fit the BERT config, or the quantization is unknown.
        """
        self.vocab_size = int(bert_config["vocab_size"])
        self.device = serving_device(device, quantization, directory)
        encoder = quantize(load_weights(build_encoder(bert_config), directory / WEIGHTS_FILE), quantization)
        self.bert = encoder.to(self.device)

    @torch.inference_mode()
    def embed_tensor(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        """Mean-pooled, L2-normalised embeddings [N, 384], on the encoder's device, for INT64 ids and
        mask [N, L]."""
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """`embed_tensor` as float32 numpy on the CPU."""
        return self.embed_tensor(input_ids, attention_mask).cpu().numpy()


class SentimentHead(nn.Module):
    """A linear classifier over sentence embeddings."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(EMBEDDING_SIZE, classes)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of embeddings."""
        return self.linear(embeddings)


class Sentiment:
    """A loaded sentiment version: an encoder and the head trained over its embeddings."""

    def __init__(self, encoder: Encoder, directory: Path, classes: int, quantization: str | None = None) -> None:
        """Load the head's weights, quantized by `quantization` (a config's scheme) if given, onto the
        encoder's device (a quantized head stays on the CPU).

        Raises:
            RepositoryError: the weights do not fit the head, or the quantization is unknown.
        """
        self.encoder = encoder
        self.device = serving_device(encoder.device, quantization, directory)
        head = quantize(load_weights(SentimentHead(classes), directory / HEAD_FILE), quantization)
        self.head = head.to(self.device)

    @torch.inference_mode()
    def probabilities(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes] on the CPU."""
        embeddings = self.encoder.embed_tensor(input_ids, attention_mask).to(self.device)
        return torch.softmax(self.head(embeddings), dim=1).cpu().numpy()
