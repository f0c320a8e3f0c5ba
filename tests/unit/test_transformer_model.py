"""The MiniLM encoder in process: the packed encoder, loaded straight from a BERT checkpoint, computes
what transformers' padded `BertModel` does; serving never imports transformers."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from services.common.repository import RepositoryError
from services.common.torch_weights import save_weights
from services.transformer.model import WEIGHTS_FILE, Encoder
from tests.conftest import PYTHON, REPO_ROOT

BERT = {
    "vocab_size": 500,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def build_encoder(bert_config: dict) -> BertModel:
    """transformers' BERT of the given shape, randomly initialised, without the pooler."""
    return BertModel(BertConfig(**bert_config), add_pooling_layer=False).eval()


def padded_reference(bert, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean pooling over `BertModel`'s padded batch, L2-normalised: sentence-transformers' recipe."""
    with torch.inference_mode():
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        hidden = bert(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        weights = mask_t.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1).numpy()


def test_packed_batches_match_the_padded_model_for_any_mix_of_lengths_and_masks(tmp_path):
    torch.manual_seed(0)
    bert = build_encoder(BERT)
    save_weights(bert, tmp_path / WEIGHTS_FILE)
    encoder = Encoder(tmp_path, BERT)
    rng = np.random.default_rng(0)
    lengths = [1, 5, 5, 40, 17, 17, 17, 3, 40, 9]
    ids = rng.integers(0, BERT["vocab_size"], (len(lengths), max(lengths)))
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    mask[2, 0], mask[2, 7] = 0, 1
    expected = padded_reference(bert, ids, mask)
    np.testing.assert_allclose(encoder.embed(ids, mask), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(ids[3:4], mask[3:4]), expected[3:4], atol=1e-5)
    shuffled = rng.permutation(len(lengths))
    np.testing.assert_allclose(encoder.embed(ids[shuffled], mask[shuffled]), expected[shuffled], atol=1e-5)


def test_an_int8_encoder_runs_packed_and_stays_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    save_weights(build_encoder(BERT), tmp_path / WEIGHTS_FILE)
    ids = np.random.default_rng(1).integers(0, BERT["vocab_size"], (4, 12))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    exact = Encoder(tmp_path, BERT).embed(ids, mask)
    int8 = Encoder(tmp_path, BERT, "dynamic_int8")
    assert isinstance(int8.network.layers[0].qkv, torch.ao.nn.quantized.dynamic.Linear)
    quantized = int8.embed(ids, mask)
    assert quantized.shape == (4, 32) and not np.array_equal(exact, quantized)
    assert (exact * quantized).sum(1).min() > 0.98


def test_a_checkpoint_missing_a_layer_tensor_is_refused_by_name(tmp_path):
    state = build_encoder(BERT).state_dict()
    del state["encoder.layer.1.attention.self.key.bias"]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(RepositoryError, match=r"missing \['encoder.layer.1.attention.self.key.bias'\]"):
        Encoder(tmp_path, BERT)


def test_a_checkpoint_of_another_shape_is_refused(tmp_path):
    save_weights(build_encoder({**BERT, "intermediate_size": 48}), tmp_path / WEIGHTS_FILE)
    with pytest.raises(RepositoryError, match=r"layers\.0\.intermediate\.weight is \[48, 32\]"):
        Encoder(tmp_path, BERT)


def test_serving_the_transformer_never_imports_transformers():
    script = (
        "import sys; import services.transformer.model, services.transformer.servicer, services.common.service; "
        "assert 'transformers' not in sys.modules, sorted(m for m in sys.modules if m.startswith('transformers'))"
    )
    subprocess.run([PYTHON, "-c", script], cwd=REPO_ROOT, check=True)
