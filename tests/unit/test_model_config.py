"""The v2 ModelConfig of a model: Triton's configuration, from what the model declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from maas.inference import model_config_pb2 as config_pb
from services.common.batched import serve_model
from services.common.echo import echo_model
from services.common.v2 import model_config
from services.tokenizer.model import WordPieceTokenizer
from services.tokenizer.spec import TokenizerSettings
from tests.contract.linear_model import linear, make_version


def test_a_batched_model_reports_its_batcher_tensors_without_the_batch_dimension_and_policy(tmp_path: Path):
    make_version(tmp_path, 1, scale=1.0)
    (tmp_path / "linear" / "model.json").write_text('{"version_policy": "specific:1,3"}')
    config = model_config(linear(tmp_path, max_batch_size=16, max_queue_delay_ms=2.5))
    assert (config.name, config.platform, config.max_batch_size) == ("linear", "pytorch_safetensors", 16)
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("X", config_pb.TYPE_FP32, [4], False)
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("Y", config_pb.TYPE_FP32, [2])]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert config.version_policy.WhichOneof("policy_choice") == "specific"
    assert list(config.version_policy.specific.versions) == [1, 3]


@pytest.mark.parametrize(("policy", "choice"), [("latest:2", "latest"), ("all", "all"), (None, "latest")])
def test_every_version_policy_is_reported(tmp_path: Path, policy: str | None, choice: str):
    make_version(tmp_path, 1, scale=1.0)
    if policy:
        (tmp_path / "linear" / "model.json").write_text(f'{{"version_policy": "{policy}"}}')
    reported = model_config(linear(tmp_path)).version_policy
    assert reported.WhichOneof("policy_choice") == choice
    if choice == "latest":
        assert reported.latest.num_versions == (2 if policy else 1)


def test_a_model_without_a_batcher_keeps_every_dimension(tmp_path: Path):
    config = model_config(serve_model(WordPieceTokenizer, TokenizerSettings(model_repository=tmp_path)))
    assert config.max_batch_size == 0 and config.WhichOneof("scheduling_choice") is None
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("TEXT", config_pb.TYPE_STRING, [-1], False),
        ("TEXT_PAIR", config_pb.TYPE_STRING, [-1], True),
    ]
    assert {o.name: list(o.dims) for o in config.output} == {
        n: [-1, -1] for n in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS")
    }
    echo = model_config(echo_model())
    assert (echo.name, echo.platform, echo.max_batch_size, len(echo.input)) == ("echo", "maas_echo", 0, 0)
    assert echo.WhichOneof("scheduling_choice") is None
