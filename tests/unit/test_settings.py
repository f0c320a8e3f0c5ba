"""Settings: env prefixes per ARCHITECTURE.md, global settings, validation at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import EchoSettings, RaySettings
from services.gateway.spec import GatewaySettings
from services.text.spec import TextSettings
from services.tokenizer.spec import TokenizerSettings
from services.transformer.spec import TransformerSettings
from services.vision.spec import VisionSettings

CONTRACT = [
    (GatewaySettings, "MAAS_GATEWAY_", 50051),
    (TokenizerSettings, "MAAS_TOKENIZER_", 50052),
    (VisionSettings, "MAAS_VISION_", 50053),
    (TextSettings, "MAAS_TEXT_", 50054),
    (TransformerSettings, "MAAS_TRANSFORMER_", 50055),
]


@pytest.mark.parametrize(("cls", "prefix", "port"), CONTRACT)
def test_default_ports_and_prefixes(monkeypatch, cls, prefix, port):
    settings = cls()
    assert (settings.host, settings.port, settings.metrics_bind_port) == ("127.0.0.1", port, port + 1000)
    monkeypatch.setenv(f"{prefix}PORT", "6000")
    monkeypatch.setenv(f"{prefix}HOST", "0.0.0.0")
    assert (cls().host, cls().port, cls().metrics_bind_port) == ("0.0.0.0", 6000, 7000)


def test_prefixes_do_not_leak_between_services(monkeypatch):
    monkeypatch.setenv("MAAS_VISION_PORT", "6001")
    assert TextSettings().port == 50054


def test_global_settings_have_no_service_prefix(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MAAS_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("MAAS_LOG_FORMAT", "json")
    settings = VisionSettings()
    assert settings.model_repository == tmp_path and settings.log_format == "json"


def test_port_zero_picks_ephemeral_metrics_and_explicit_metrics_port_wins():
    assert EchoSettings(port=0).metrics_bind_port == 0
    assert EchoSettings(port=5000, metrics_port=9100).metrics_bind_port == 9100


def test_bad_values_are_refused_at_start(monkeypatch):
    monkeypatch.setenv("MAAS_TOKENIZER_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        TokenizerSettings()
    with pytest.raises(ValidationError, match="log_format"):
        EchoSettings(log_format="xml")


def test_the_native_front_is_read_from_the_environment_and_refuses_tls(monkeypatch, tmp_path: Path):
    assert VisionSettings().front == "python"
    monkeypatch.setenv("MAAS_VISION_FRONT", "native")
    assert VisionSettings().front == "native"
    with pytest.raises(ValidationError, match="front=native serves plaintext only"):
        VisionSettings(tls_cert_file=tmp_path / "cert.pem", tls_key_file=tmp_path / "key.pem")
    monkeypatch.setenv("MAAS_VISION_FRONT", "grpc")
    with pytest.raises(ValidationError, match="front"):
        VisionSettings()


def test_text_batches_by_rows_only_unless_told(monkeypatch):
    text, transformer = TextSettings(), TransformerSettings()
    assert (text.max_texts, text.length_aware, text.max_batch_tokens) == (256, True, 0)
    assert transformer.max_batch_tokens == 0
    monkeypatch.setenv("MAAS_TEXT_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("MAAS_TEXT_LENGTH_AWARE", "false")
    batching = TextSettings().batching(max_batch_tokens=TextSettings().max_batch_tokens)
    assert (batching.max_batch_tokens, TextSettings().length_aware, TransformerSettings().max_batch_tokens) == (
        4096,
        False,
        0,
    )


def test_the_autoscalers_look_back_must_span_a_load_report():
    assert RaySettings().look_back_period_s > RaySettings().metrics_interval_s
    with pytest.raises(ValidationError, match=r"look_back_period_s \(2.0\) must be longer than metrics_interval_s"):
        RaySettings(metrics_interval_s=2.0)
