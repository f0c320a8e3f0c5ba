"""The review LSTM in process: padding and masked-out ids never change a result; the id table; int8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.repository import RepositoryError
from services.common.torch_weights import DYNAMIC_INT8, quantize
from services.text.model import PAD_ROW, UNKNOWN_ROW, ReviewLSTM, tokens_first
from services.text.train import batches, id_table


@pytest.fixture
def network() -> ReviewLSTM:
    torch.manual_seed(0)
    network = ReviewLSTM(vocab_size=50, rows=20, embedding=8, hidden=8).eval()
    network.id_to_row.copy_(torch.arange(50) % 20)
    return network


def test_padding_and_batch_neighbours_do_not_change_logits(network):
    ids = torch.tensor([[1, 5, 7, 9, 2], [1, 4, 2, 0, 0], [1, 2, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 2])
    with torch.inference_mode():
        together = network(ids, lengths)
        wider = network(torch.nn.functional.pad(ids, (0, 7), value=0), lengths)
        alone = torch.cat([network(ids[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(wider, together)
    torch.testing.assert_close(alone, together, atol=1e-6, rtol=1e-5)


def test_masked_out_ids_are_skipped():
    ids = np.array([[1, 9, 5, 9, 2], [1, 4, 2, 0, 0]])
    mask = np.array([[1, 0, 1, 0, 1], [1, 1, 1, 0, 0]])
    compact, lengths = tokens_first(ids, mask)
    assert compact[0, :3].tolist() == [1, 5, 2] and compact[1].tolist() == ids[1].tolist()
    assert lengths.tolist() == [3, 3]


def test_id_table_keeps_ids_seen_often_enough():
    ids = np.array([[101, 7, 7, 8, 0], [101, 7, 9, 0, 0]])
    table, rows = id_table(ids, np.array([4, 3]), vocab_size=200, min_count=2)
    assert rows == 4
    assert table[0] == PAD_ROW and table[8] == table[9] == table[150] == UNKNOWN_ROW
    assert sorted([table[7], table[101]]) == [2, 3]


def test_batches_cover_every_row_once_in_similar_lengths():
    lengths = np.random.default_rng(0).integers(1, 256, size=1000)
    plan = batches(lengths, 32, np.random.default_rng(1))
    assert sorted(np.concatenate(plan).tolist()) == list(range(1000))
    assert max(len(b) for b in plan) == 32


def test_int8_quantizes_lstms_and_linears_and_refuses_unknown_schemes(network):
    quantized = quantize(network, DYNAMIC_INT8)
    dynamic = torch.ao.nn.quantized.dynamic
    assert isinstance(quantized.forwards, dynamic.LSTM) and isinstance(quantized.backwards, dynamic.LSTM)
    assert isinstance(quantized.classifier, dynamic.Linear)
    assert quantized.classifier.weight().qscheme() == torch.per_channel_affine
    assert type(quantized.embedding) is torch.nn.Embedding and type(network.forwards) is torch.nn.LSTM
    with pytest.raises(RepositoryError, match="unknown quantization 'int4'"):
        quantize(network, "int4")
