"""The gateway's routing file and the tracing switch: parsed once, refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import TracingSettings
from services.gateway.routing import Routing, RoutingError, load_routing
from services.gateway.spec import GatewaySettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    return path


def test_the_shipped_routing_file_routes_every_model_to_the_default_ports():
    routing = load_routing(GatewaySettings().routing_file)
    assert {name: t.address for name, t in routing.targets.items()} == {
        "tokenizer": "dns:///127.0.0.1:50052",
        "vision": "dns:///127.0.0.1:50053",
        "text": "dns:///127.0.0.1:50054",
        "transformer": "dns:///127.0.0.1:50055",
    }
    assert routing.target_of("review_lstm") == "text" and routing.target_of("minilm_sentiment") == "transformer"
    assert routing.models_of("transformer") == ["minilm_embed", "minilm_sentiment"]
    assert routing.target_of("echo") is None


def test_routing_file_setting(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MAAS_GATEWAY_ROUTING_FILE", str(tmp_path / "r.yaml"))
    assert GatewaySettings().routing_file == tmp_path / "r.yaml"


def test_with_addresses_keeps_only_started_targets():
    routing = load_routing(GatewaySettings().routing_file)
    local = routing.with_addresses({"tokenizer": "127.0.0.1:4001", "transformer": "127.0.0.1:4002"})
    assert {n: t.address for n, t in local.targets.items()} == {
        "tokenizer": "dns:///127.0.0.1:4001",
        "transformer": "dns:///127.0.0.1:4002",
    }
    assert list(local.models) == ["tokenizer", "minilm_embed", "minilm_sentiment"]
    assert Routing.model_validate_json(local.model_dump_json()) == local


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("targets: {}\nmodels:\n  m: {target: nowhere}\n", ["not defined", "m -> nowhere"]),
        ("targets: {a: {address: 'dns:///x:1'}}\nmodels: {echo: {target: a}}\n", ["echo is served by the gateway"]),
        ("targets: {a: {adress: 'dns:///x:1'}}\nmodels: {}\n", ["targets.a.adress", "Extra inputs"]),
        ("targets: {a: {address: ''}}\nmodels: {}\n", ["targets.a.address"]),
        ("targets: [\n", ["not YAML"]),
        ("", ["file"]),
    ],
)
def test_a_bad_routing_file_is_refused_with_where_and_why(tmp_path: Path, text: str, fragments: list[str]):
    path = write(tmp_path, text)
    with pytest.raises(RoutingError) as info:
        load_routing(path)
    message = str(info.value)
    assert message.startswith(f"routing file {path}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_routing_file_is_refused(tmp_path: Path):
    with pytest.raises(RoutingError, match="No such file"):
        load_routing(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_off_unless_the_otel_settings_turn_it_on(monkeypatch, env, exporters):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert TracingSettings().exporters() == exporters


def test_an_unsupported_exporter_is_refused(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="unsupported zipkin"):
        TracingSettings().exporters()
