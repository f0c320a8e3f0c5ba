"""The gateway, declared once: the public entry point, routing to every other service."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import REPO_ROOT, ServiceSettings
from services.common.spec import ServiceSpec
from services.common.tls import ClientTls

ROUTING_FILE = REPO_ROOT / "services" / "gateway" / "routing.yaml"


class GatewaySettings(ServiceSettings):
    """The gateway: the public entry point."""

    model_config = SettingsConfigDict(env_prefix="MAAS_GATEWAY_")
    port: int = Field(50051, ge=0, le=65535)
    routing_file: Path = Field(
        ROUTING_FILE, description="YAML routing file: which target (gRPC address) serves which model."
    )
    default_timeout_seconds: float = Field(
        30.0, gt=0, description="Deadline of downstream calls when the caller set none."
    )
    default_text_model: Literal["lstm", "transformer"] = Field(
        "transformer", description="Text model of ClassifyText calls that name none."
    )
    stream_chunk_size: int = Field(32, ge=1, le=256, description="Texts per downstream call in StreamClassifyText.")
    stream_concurrency: int = Field(4, ge=1, description="StreamClassifyText chunks in flight at once per call.")
    max_stream_texts: int = Field(100_000, ge=1, description="Texts per StreamClassifyText call; more is refused.")
    reload_interval_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the routing file is checked for a change (reloaded live)."
    )
    max_reconnect_backoff_seconds: float = Field(
        1.0, ge=0.1, le=120, description="Longest wait between attempts to re-dial a lost downstream replica."
    )
    dns_min_resolution_interval_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Shortest time between two DNS resolutions of a `dns:` target: gRPC resolves again when a "
        "connection closes (the servers' MAX_CONNECTION_AGE_S), at most this often.",
    )
    api_keys_file: Path | None = Field(
        None, description="YAML file of API keys (their roles and rate limits); unset: calls need no key."
    )
    connect_timeout_seconds: float = Field(
        10.0,
        ge=0,
        description="At start, how long the gateway waits for its channels to every target to connect before it "
        "reports SERVING anyway (a target still down is logged and connected later).",
    )
    http_enabled: bool = Field(
        True, description="Serve the Open Inference Protocol's REST binding beside gRPC, on http_port."
    )
    http_port: int = Field(
        8080, ge=0, le=65535, description="Port of the REST binding (HTTP/1.1, JSON and binary tensors); 0 picks one."
    )
    rate_limit_replicas: int = Field(
        1,
        ge=1,
        description="Gateway replicas sharing each API key's rate limit: each takes 1/N of the key's rate and "
        "burst (the chart sets the replica count it knows).",
    )
    downstream_tls_ca_file: Path | None = Field(
        None, description="PEM CA the model services' certificates chain to; set: the gateway dials them with TLS."
    )
    downstream_tls_cert_file: Path | None = Field(
        None, description="PEM certificate the gateway presents to the model services (mTLS), with its key."
    )
    downstream_tls_key_file: Path | None = Field(None, description="PEM private key of downstream_tls_cert_file.")

    def downstream_tls(self) -> ClientTls:
        """The TLS files the gateway dials the model services with (none named: plaintext).

        Raises:
            TlsFilesError: a certificate is named without its key, or a key without its certificate.
        """
        return ClientTls(self.downstream_tls_ca_file, self.downstream_tls_cert_file, self.downstream_tls_key_file)


SPEC = ServiceSpec(name="gateway", settings=GatewaySettings, server="services.gateway.hosting:build_server", group=2)
