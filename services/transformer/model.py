"""all-MiniLM-L6-v2 sentence embeddings and the sentiment head over them: the served models
`minilm_embed` and `minilm_sentiment`. No gRPC, no Ray, no `transformers`.

The encoder is BERT's, written here in the layout it runs in (`PackedEncoder`): the shape comes from
the BERT config kept in the version's config.json (data, not code), and the weights load from
safetensors straight into that layout (query, key and value in one matrix), with no random
initialisation first. Sentence embeddings are the attention-masked mean of the last hidden states,
L2-normalised, as sentence-transformers computes them. Batches run packed: a batch's real tokens
only, never its padding. An encoder is loaded once per version directory and quantization, and shared
by the loaded versions of both models that use it, for as long as one of them is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.common.model import Arrays, Parameters, TensorSpec, Version
from services.common.onnx_runtime import OnnxSession, is_onnx
from services.common.repository import RepositoryError, read_version
from services.common.sequences import SEQUENCE_BATCHING, checked_sequences
from services.common.torch_weights import CPU, load_state, load_weights, quantize, read_weights, serving_device
from services.transformer.spec import (
    EMBED_MODEL,
    EMBED_OUTPUTS,
    EMBEDDING_SIZE,
    INPUTS,
    PLATFORM,
    SENTIMENT_MODEL,
    SENTIMENT_OUTPUTS,
)

ENCODER_ARCHITECTURE = "bert_mean_pooling"
HEAD_ARCHITECTURE = "linear_head"
WEIGHTS_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": nn.functional.gelu,
    "gelu_new": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "relu": nn.functional.relu,
}
"""BERT's `hidden_act` names, as transformers defines them."""
_LAYER_TENSORS = {
    "attention_output": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}
"""Packed layer module -> the BERT layer module whose weight and bias it holds (qkv aside)."""
_QKV = ("query", "key", "value")


def bert_tensor_names(bert_config: dict) -> list[str]:
    """The tensors of a BERT checkpoint (transformers' names) that the encoder reads."""
    embeddings = [
        f"embeddings.{name}.weight" for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ]
    names = [*embeddings, "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for index in range(int(bert_config["num_hidden_layers"])):
        layer = f"encoder.layer.{index}."
        modules = [f"attention.self.{name}" for name in _QKV] + list(_LAYER_TENSORS.values())
        names += [f"{layer}{module}.{kind}" for module in modules for kind in ("weight", "bias")]
    return names


def packed_state(bert: dict[str, torch.Tensor], bert_config: dict, path: Path) -> dict[str, torch.Tensor]:
    """A BERT checkpoint's tensors renamed (and query, key, value joined) into `PackedEncoder`'s layout.

    Raises:
        RepositoryError: a tensor the encoder reads is missing (the message names the first few).
    """
    missing = [name for name in bert_tensor_names(bert_config) if name not in bert]
    if missing:
        raise RepositoryError(f"{path} does not match the architecture in config.json: missing {missing[:6]}")
    state = {name: bert[name] for name in bert if name.startswith("embeddings.") and name.endswith(("weight", "bias"))}
    for index in range(int(bert_config["num_hidden_layers"])):
        source, target = f"encoder.layer.{index}.", f"layers.{index}."
        for kind in ("weight", "bias"):
            state[f"{target}qkv.{kind}"] = torch.cat([bert[f"{source}attention.self.{n}.{kind}"] for n in _QKV])
            for packed, original in _LAYER_TENSORS.items():
                state[f"{target}{packed}.{kind}"] = bert[f"{source}{original}.{kind}"]
    return state


def _uninitialised_embedding(rows: int, width: int) -> nn.Embedding:
    """An embedding table whose weights are loaded next: not drawn at random first (on the `meta` device,
    a random draw would import torch's compiler, seconds of start-up)."""
    return nn.Embedding(rows, width, _weight=torch.empty(rows, width))


class _Embeddings(nn.Module):
    """BERT's embeddings: word, position and token type, summed and normalised."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = _uninitialised_embedding(config["vocab_size"], hidden)
        self.position_embeddings = _uninitialised_embedding(config.get("max_position_embeddings", 512), hidden)
        self.token_type_embeddings = _uninitialised_embedding(config.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Embeddings [T, hidden] of packed token ids and their positions (token type 0)."""
        summed = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(summed)


class _PackedLayer(nn.Module):
    """One BERT layer over packed tokens [T, hidden], with query, key and value in one matrix product."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden, inner = config["hidden_size"], config.get("intermediate_size", 4 * config["hidden_size"])
        eps = config.get("layer_norm_eps", 1e-12)
        self.heads = config["num_attention_heads"]
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attention_output, self.attention_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.intermediate, self.activation = nn.Linear(hidden, inner), ACTIVATIONS[config.get("hidden_act", "gelu")]
        self.output, self.output_norm = nn.Linear(inner, hidden), nn.LayerNorm(hidden, eps=eps)

    def forward(self, tokens: torch.Tensor, groups: list[tuple[int, int]]) -> torch.Tensor:
        """The layer's output for `tokens` holding `groups`' sequences one after another.

        Args:
            tokens: [T, hidden], sequence after sequence.
            groups: (sequences, length) runs of equal-length sequences, in the order of `tokens`;
                attention runs within each sequence, one call per run.

        Returns:
            The layer's hidden states [T, hidden], in the order of `tokens`.
        """
        total, hidden = tokens.shape
        head_size = hidden // self.heads
        qkv = self.qkv(tokens).view(total, 3, self.heads, head_size)
        attended, start = [], 0
        for sequences, length in groups:
            run = qkv[start : start + sequences * length].view(sequences, length, 3, self.heads, head_size)
            query, key, value = run.permute(2, 0, 3, 1, 4)
            context = nn.functional.scaled_dot_product_attention(query, key, value)
            attended.append(context.transpose(1, 2).reshape(sequences * length, hidden))
            start += sequences * length
        context = attended[0] if len(attended) == 1 else torch.cat(attended)
        tokens = self.attention_norm(self.attention_output(context) + tokens)
        return self.output_norm(self.output(self.activation(self.intermediate(tokens))) + tokens)


class PackedEncoder(nn.Module):
    """BERT over packed tokens, with mean pooling and L2 normalisation.

    A padded batch spends compute on every padding token, in every layer; packed, a batch of 32 short
    texts costs what its real tokens cost, and sequences of one length share one attention call.
    Position ids stay each token's column, so any 0/1 mask gives what a padded BERT gives with it.
    """

    def __init__(self, bert_config: dict) -> None:
        """Build the encoder of a BERT config (uninitialised weights; build it on `meta` and load).

        Raises:
            RepositoryError: the config names an activation the encoder does not know.
        """
        super().__init__()
        activation = bert_config.get("hidden_act", "gelu")
        if activation not in ACTIVATIONS:
            raise RepositoryError(f"BERT hidden_act {activation!r} is not supported; known: {', '.join(ACTIVATIONS)}")
        self.embeddings = _Embeddings(bert_config)
        self.layers = nn.ModuleList(_PackedLayer(bert_config) for _ in range(int(bert_config["num_hidden_layers"])))

    @classmethod
    def load(cls, bert_config: dict, path: Path) -> PackedEncoder:
        """The encoder with a BERT checkpoint's weights (safetensors), read straight into the packed layout.

        Raises:
            RepositoryError: the file is not safetensors or does not fit the config.
        """
        with torch.device("meta"):
            encoder = cls(bert_config)
        return load_state(encoder, packed_state(read_weights(path), bert_config, path), path)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, device: torch.device) -> torch.Tensor:
        """Embed a padded batch, packing it first.

        Args:
            input_ids: INT64 token ids [N, L].
            attention_mask: 0/1 [N, L], every row with at least one 1.
            device: where the network's weights are.

        Returns:
            Mean-pooled, L2-normalised sentence embeddings [N, hidden] on `device`, in the rows' order.
        """
        lengths = attention_mask.sum(1)
        order = np.argsort(lengths, kind="stable")
        rows, columns = np.nonzero(attention_mask[order])
        run_lengths, run_sizes = np.unique(lengths[order], return_counts=True)
        groups = list(zip(run_sizes.tolist(), run_lengths.tolist(), strict=True))
        ids = torch.from_numpy(input_ids[order][rows, columns]).to(device)
        positions = torch.from_numpy(columns).to(device)
        tokens = self.embeddings(ids, positions)
        for layer in self.layers:
            tokens = layer(tokens, groups)
        sequences = torch.from_numpy(order[rows]).to(device)
        sums = tokens.new_zeros(len(lengths), tokens.shape[1]).index_add_(0, sequences, tokens)
        means = sums / torch.from_numpy(lengths).to(device, tokens.dtype).unsqueeze(1)
        return nn.functional.normalize(means, p=2, dim=1)


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
        self.network = quantize(PackedEncoder.load(bert_config, directory / WEIGHTS_FILE), quantization).to(self.device)

    @torch.inference_mode()
    def embed_tensor(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        """Mean-pooled, L2-normalised embeddings [N, 384], on the encoder's device, for INT64 ids and
        0/1 mask [N, L] (every row with at least one token)."""
        return self.network(input_ids, attention_mask, self.device)

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


def shared_encoder(version: Version, directory: Path, quantization: str | None) -> Encoder:
    """The encoder of a `minilm_embed` version directory, loaded once for every version that uses it,
    quantized if either its config or `quantization` says so.

    Raises:
        RepositoryError: the directory is not a usable encoder version.
    """
    config = version.config if directory == version.directory else read_version(directory, EMBED_MODEL)
    bert = config.network(ENCODER_ARCHITECTURE, directory)["bert"]
    scheme = quantization or config.quantization
    device = torch.device(version.device)
    return version.share((directory.resolve(), scheme), lambda: Encoder(directory, bert, scheme, device))


class OnnxEncoder:
    """An exported encoder on ONNX Runtime: its graph takes INPUT_IDS and ATTENTION_MASK and gives EMBEDDING."""

    def __init__(self, session: OnnxSession, vocab_size: int) -> None:
        self.session = session
        self.vocab_size = vocab_size
        self.device = session.device

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings [N, 384], float32."""
        return self.session(input_ids, attention_mask)


def onnx_session(version: Version, outputs: tuple[TensorSpec, ...]) -> tuple[OnnxSession, int]:
    """The version's ONNX graph, checked to take the sequence inputs and give `outputs`, and the vocabulary
    size its config's BERT shape records.

    Raises:
        RepositoryError: the file is missing or unloadable, its tensors differ, or the config records no
            BERT shape.
    """
    bert = version.config.architecture.get("bert")
    if not isinstance(bert, dict) or "vocab_size" not in bert:
        raise RepositoryError(f"{version.directory}: the architecture records no BERT shape (bert.vocab_size)")
    session = OnnxSession.of(version)
    session.check(INPUTS, outputs, version.directory)
    return session, int(bert["vocab_size"])


class Embedder:
    """v2 model `minilm_embed`: INPUT_IDS, ATTENTION_MASK INT64 [N, L] -> EMBEDDING FP32 [N, 384].

    A torch version runs the packed encoder (shared with the sentiment heads over it); a version on
    ONNX Runtime runs its exported graph over the padded batch, behind the same checks.
    """

    name = EMBED_MODEL
    platform = PLATFORM
    inputs = INPUTS
    outputs = EMBED_OUTPUTS
    batching = SEQUENCE_BATCHING

    def __init__(self, encoder: Encoder | OnnxEncoder, max_texts: int = 256) -> None:
        self.encoder = encoder
        self.device = encoder.device
        self.max_texts = max_texts

    @classmethod
    def load(cls, version: Version) -> Embedder:
        """The version's encoder, quantized as its config says, or its ONNX graph.

        Raises:
            RepositoryError: the files do not fit the config, or the quantization is unknown.
        """
        if is_onnx(version.config):
            return cls(OnnxEncoder(*onnx_session(version, EMBED_OUTPUTS)), version.settings.max_texts)
        return cls(shared_encoder(version, version.directory, None), version.settings.max_texts)

    def prepare(self, inputs: Arrays, parameters: Parameters) -> Arrays:
        """Check ids and mask and drop unused padding (see `checked_sequences`)."""
        return checked_sequences(inputs, self.encoder.vocab_size, self.max_texts)

    def predict(self, batch: Arrays) -> Arrays:
        """EMBEDDING of a batch of token ids."""
        return {"EMBEDDING": self.encoder.embed(batch["INPUT_IDS"], batch["ATTENTION_MASK"])}


class TorchSentiment:
    """A head over a loaded encoder, on torch: ids and mask in, probabilities out."""

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
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes] on the CPU."""
        embeddings = self.encoder.embed_tensor(input_ids, attention_mask).to(self.device)
        return torch.softmax(self.head(embeddings), dim=1).cpu().numpy()


class SentimentClassifier:
    """v2 model `minilm_sentiment`: INPUT_IDS, ATTENTION_MASK INT64 [N, L] -> PROBABILITIES FP32 [N, 2].

    A torch version is the encoder a head was trained on, and the head (`TorchSentiment`); a version on
    ONNX Runtime is one exported graph of both, behind the same checks.
    """

    name = SENTIMENT_MODEL
    platform = PLATFORM
    inputs = INPUTS
    outputs = SENTIMENT_OUTPUTS
    batching = SEQUENCE_BATCHING

    def __init__(
        self,
        forward: Callable[[np.ndarray, np.ndarray], np.ndarray],
        vocab_size: int,
        device: torch.device | str = CPU,
        max_texts: int = 256,
    ) -> None:
        """Args:
        forward: probabilities for ids and mask [N, L] (`TorchSentiment` or an `OnnxSession`).
        vocab_size: ids must lie below it.
        device: where `forward` computes.
        max_texts: sequences per request; more is refused.
        """
        self.forward = forward
        self.vocab_size = vocab_size
        self.device = device
        self.max_texts = max_texts

    @classmethod
    def load(cls, version: Version) -> SentimentClassifier:
        """The head of a version over the encoder its config names, both quantized as its config says; or
        its ONNX graph.

        Raises:
            RepositoryError: the config names another architecture, or the files do not fit it.
        """
        config = version.config
        architecture = config.network(HEAD_ARCHITECTURE, version.directory)
        if is_onnx(config):
            session, vocab_size = onnx_session(version, SENTIMENT_OUTPUTS)
            return cls(session, vocab_size, session.device, version.settings.max_texts)
        encoder = shared_encoder(version, version.directory.parents[1] / architecture["encoder"], config.quantization)
        forward = TorchSentiment(encoder, version.directory, len(config.labels), config.quantization)
        return cls(forward, encoder.vocab_size, forward.device, version.settings.max_texts)

    def prepare(self, inputs: Arrays, parameters: Parameters) -> Arrays:
        """Check ids and mask and drop unused padding (see `checked_sequences`)."""
        return checked_sequences(inputs, self.vocab_size, self.max_texts)

    def predict(self, batch: Arrays) -> Arrays:
        """PROBABILITIES of a batch of token ids."""
        return {"PROBABILITIES": self.probabilities(batch["INPUT_IDS"], batch["ATTENTION_MASK"])}

    def probabilities(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes]."""
        return self.forward(input_ids, attention_mask)
