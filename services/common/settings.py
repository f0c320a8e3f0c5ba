"""Settings every service shares: one pydantic-settings class per service, each with its own env prefix.

The classes here are the shared parts (a server, a service of models, the ray hosting, tracing); each
service declares its own subclass in its spec. Settings are read once, when a service starts, and
validated then; nothing reads the environment at import time. Two settings are global to every
service: `MAAS_MODEL_REPOSITORY` and `MAAS_LOG_FORMAT`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.devices import DEVICE_PATTERN

if TYPE_CHECKING:
    from services.common.batcher import BatchingConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS_PORT_OFFSET = 1000


class ProcessSettings(BaseSettings):
    """Settings of the `maas` process itself, whatever it runs."""

    model_config = SettingsConfigDict(env_prefix="MAAS_", extra="ignore", frozen=True)

    allow_root: bool = Field(
        True, description="Whether `maas` may run as root (uid 0); the images set false, as they run as uid 10001."
    )


class ServiceSettings(BaseSettings):
    """Settings every gRPC service shares. Subclasses set the env prefix and the default port."""

    model_config = SettingsConfigDict(env_prefix="MAAS_", extra="ignore", frozen=True, protected_namespaces=())

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 in containers.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus HTTP port; default gRPC port + 1000 (0 if port is 0)."
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest gRPC message received or sent; larger is RESOURCE_EXHAUSTED."
    )
    inline_max_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="Requests with at most this much text, image or tensor data (bytes; pixels for images) are "
        "prepared on the event loop; larger ones on worker threads, a chunk at a time, so that health checks and "
        "other callers never wait behind them.",
    )
    max_concurrent_rpcs: int = Field(
        0,
        ge=0,
        description="Most calls the server handles at once (0: no limit); gRPC refuses more with RESOURCE_EXHAUSTED "
        "before they reach a handler, which is cheap enough to hold up past capacity when calls cost more in the "
        "event loop than in the model. Health checks count too unless HEALTH_PORT serves them.",
    )
    drain_grace_seconds: float = Field(
        10.0, gt=0, description="On SIGTERM, how long in-flight calls get to finish before the server stops."
    )
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        description="Close each client connection after about this many seconds (gRPC adds up to 10% jitter), so "
        "clients resolve a headless Service's name again and reach replicas added since; 0 keeps connections open.",
    )
    max_connection_age_grace_s: float = Field(
        0.0, ge=0, description="How long calls in flight on an aged connection get to finish before it is closed."
    )
    model_repository: Path = Field(
        REPO_ROOT / "model_repository",
        validation_alias=AliasChoices("MAAS_MODEL_REPOSITORY", "model_repository"),
        description="Root of the model repository: <repo>/<model>/<version>/.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", validation_alias=AliasChoices("MAAS_LOG_FORMAT", "log_format"), description="Log line format."
    )
    log_level: str = Field("INFO", description="Python logging level name.")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain to serve TLS with (with tls_key_file); re-read when it changes."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA(s) that callers' certificates must chain to: set, callers need one (mTLS)."
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Plaintext port serving grpc.health.v1 and nothing else (for kubelet's gRPC probes, which "
        "cannot speak TLS); unset: none; 0 picks a free one.",
    )

    @model_validator(mode="after")
    def _tls_files_pair(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        return self

    @property
    def metrics_bind_port(self) -> int:
        """The Prometheus port to bind: the explicit setting, else gRPC port + 1000 (0 if port is 0)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return self.port + METRICS_PORT_OFFSET if self.port else 0


class EchoSettings(ServiceSettings):
    """The runtime alone, serving only the diagnostic `echo` model (`maas run echo-server`)."""

    model_config = SettingsConfigDict(env_prefix="MAAS_ECHO_")
    port: int = Field(50050, ge=0, le=65535)


class TracingSettings(BaseSettings):
    """OpenTelemetry's standard `OTEL_*` variables, as far as maas reads them.

    Tracing is off unless `OTEL_TRACES_EXPORTER` names `otlp` or `console`, or an OTLP endpoint is set
    (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_TRACES_EXPORTER`
    is not `none`. `OTEL_SDK_DISABLED=true` turns it off whatever else is set. The OTLP exporter reads
    the rest of its `OTEL_EXPORTER_OTLP_*` settings (headers, timeouts, ...) itself.
    """

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore", frozen=True)

    sdk_disabled: bool = Field(False, description="true turns tracing off, whatever else is set.")
    traces_exporter: str = Field(
        "",
        description="Span exporters, comma-separated: `otlp`, `console` (to stderr) or `none`; empty: `otlp` when "
        "an OTLP endpoint is set, else none.",
    )
    exporter_otlp_endpoint: str = Field(
        "", description="OTLP collector to send spans to (e.g. http://127.0.0.1:4317); set, tracing is on."
    )
    exporter_otlp_traces_endpoint: str = Field(
        "", description="OTLP endpoint for traces only; takes precedence over OTEL_EXPORTER_OTLP_ENDPOINT."
    )
    exporter_otlp_protocol: Literal["grpc", "http/protobuf"] = Field("grpc", description="OTLP transport.")
    service_name: str = Field("", description="`service.name` of the spans; empty: the service's own name.")

    def exporters(self) -> list[str]:
        """The span exporters to run: `otlp` and/or `console`, or none when tracing is off.

        Raises:
            ValueError: `OTEL_TRACES_EXPORTER` names an exporter maas does not support.
        """
        if self.sdk_disabled:
            return []
        named = [name.strip() for name in self.traces_exporter.split(",") if name.strip()]
        if not named:
            return ["otlp"] if self.exporter_otlp_endpoint or self.exporter_otlp_traces_endpoint else []
        if named == ["none"]:
            return []
        unknown = [name for name in named if name not in ("otlp", "console")]
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)}; use otlp, console or none")
        return named


QUEUE_DELAY = (
    "Longest a batch waits, once the model is free, for the callers of the last batch to come back; 0 runs at "
    "once. A lone caller never waits."
)


class ModelServiceSettings(ServiceSettings):
    """A service of models: dynamic batching, compute threads and device.

    Subclasses set the env prefix and the default port; `maas serve` reads these from `MAAS_<NAME>_*`.
    """

    max_batch_size: int = Field(32, ge=1, description="Rows per model execution; 1 turns batching off.")
    max_queue_delay_ms: float = Field(0.0, ge=0, description=QUEUE_DELAY)
    max_queue_size: int = Field(1024, ge=1, description="Requests waiting per model version; more is refused.")
    max_latency_ms: float = Field(
        0.0,
        ge=0,
        description="A p99 target for each request's queue, batch wait and compute, instead of MAX_QUEUE_DELAY_MS "
        "(0: none). The batcher learns its batches' cost, waits and sizes batches to meet it, and refuses requests "
        "that cannot meet it at once (RESOURCE_EXHAUSTED with a retry delay).",
    )
    num_threads: int = Field(1, ge=1, description="torch intra-op threads per process.")
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="torch device: auto (cuda:0 when torch sees a CUDA device, else cpu), cpu, cuda or cuda:N.",
    )
    length_aware: bool = Field(
        True,
        description="Models with padded sequence inputs: pad batches to their longest sequence (else to fixed_length).",
    )
    fixed_length: int = Field(256, ge=1, le=512, description="Padded length when length_aware is off.")
    front: Literal["python", "native"] = Field(
        "python",
        description="What answers on the gRPC port (grpc hosting): `python`, the grpc.aio server; `native`, a C++ "
        "server that answers plain ModelInfer calls itself, a batch at a time, and proxies every other call to the "
        "grpc.aio server on a loopback port (docs/native-front.md; built by `make native` and into the model images; "
        "no TLS).",
    )
    front_max_streams: int = Field(
        2048,
        ge=1,
        le=2**31 - 1,
        description="front=native: most calls one client connection may have open at once on the public port "
        "(HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); the client holds the rest until earlier ones end, so a flood "
        "waits in the client rather than unread in this server. Keep it above MAX_QUEUE_SIZE, so that one "
        "connection (a gateway's) can still fill a queue and be refused at once (docs/native-front.md).",
    )
    max_batch_tokens: int = Field(
        0,
        ge=0,
        description="Length-aware: most rows x padded length per batch (0: only MAX_BATCH_SIZE). By default "
        "there is no budget: an LSTM's time per batch grows with its longest sequence and little with its rows, "
        "and MiniLM runs packed, so padding costs it nothing.",
    )

    @model_validator(mode="after")
    def _native_front_plaintext(self) -> ModelServiceSettings:
        if self.front == "native" and self.tls_cert_file is not None:
            raise ValueError("front=native serves plaintext only: unset tls_cert_file or use front=python")
        return self

    def batching(self, **overrides: Any) -> BatchingConfig:
        """The batcher's config from these settings; `overrides` sets other `BatchingConfig` fields
        (what the model declares: `pad`, `inline_when_idle`)."""
        # Imported here: the batcher imports telemetry, which imports these settings, and settings
        # must import on their own (a Ray worker unpickling a settings object imports this module first).
        from services.common.batcher import BatchingConfig

        fields = {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            "max_queue_size": self.max_queue_size,
            "length_aware": self.length_aware,
            "fixed_length": self.fixed_length,
            "max_batch_tokens": self.max_batch_tokens,
            "max_latency_ms": self.max_latency_ms,
        }
        return BatchingConfig(**{**fields, **overrides})


class ServedModelSettings(ModelServiceSettings):
    """A model served by `maas serve module:Class`, read from `MAAS_<NAME>_*` (the name upper-cased)."""

    port: int = Field(50060, ge=0, le=65535)
    max_rows: int = Field(1024, ge=1, description="Rows per request a model may take (OnnxModel refuses more).")


class RaySettings(BaseSettings):
    """The ray hosting: the Ray cluster, Serve's proxies, and the replicas of every service's deployment.

    Read from `MAAS_RAY_*`. The defaults suit a shared laptop: a local Ray on loopback with a small
    object store, fractional CPUs per replica, one to two replicas per service.
    """

    model_config = SettingsConfigDict(env_prefix="MAAS_RAY_", extra="ignore", frozen=True)

    address: str = Field("", description="Ray cluster to join (e.g. `auto`); empty starts a local one.")
    services: list[str] = Field(
        default_factory=list,
        description="Services `maas run ray` hosts, as a JSON list of names; empty: every service whose models exist.",
    )
    num_cpus: int = Field(4, ge=1, description="Logical CPUs a local Ray offers its replicas.")
    num_gpus: int = Field(0, ge=0, description="GPUs a local Ray offers (0 on a CPU-only machine).")
    object_store_memory: int = Field(
        200 * 1024 * 1024, ge=80 * 1024 * 1024, description="Bytes of a local Ray's object store (kept small)."
    )
    native_proxy: bool = Field(True, description="Start Serve's own gRPC proxy beside the maas fronts.")
    grpc_port: int = Field(9000, ge=0, le=65535, description="Port of Serve's gRPC proxy (0 picks a free one).")
    http_port: int = Field(8000, ge=0, le=65535, description="Port of Serve's HTTP proxy (unused by maas; loopback).")
    front_calls_per_replica: int = Field(
        1,
        ge=1,
        description="Replica calls a front keeps in flight per RPC and running replica; requests beyond go together.",
    )
    front_max_requests_per_call: int = Field(64, ge=1, description="Most requests a front sends in one replica call.")
    min_replicas: int = Field(1, ge=1, description="Fewest replicas per deployment.")
    max_replicas: int = Field(2, ge=1, description="Most replicas per deployment.")
    target_ongoing_items: float = Field(
        4.0,
        gt=0,
        description="Requests each replica should be working on, on average; the autoscaler adds replicas above it.",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica takes at once; high, so its dynamic batcher sees a full batch."
    )
    upscale_delay_s: float = Field(3.0, ge=0, description="Load must stay high this long before a replica is added.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Load must stay low this long before one is removed.")
    metrics_interval_s: float = Field(
        1.0, gt=0, description="How often each replica reports its load to Serve's controller (Serve's default: 10 s)."
    )
    look_back_period_s: float = Field(
        2.0, gt=0, description="Window the autoscaler averages load over; longer than metrics_interval_s."
    )
    replica_num_cpus: float = Field(0.5, gt=0, description="Logical CPUs per replica (fractions allowed).")
    replica_num_gpus: float = Field(
        0.0, ge=0, description="GPUs per replica of the torch services (fractions share a GPU); 0 on CPU."
    )
    health_check_period_s: float = Field(2.0, gt=0, description="How often Serve asks a replica whether it is healthy.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="How long a health check may take.")
    graceful_shutdown_timeout_s: float = Field(
        10.0, ge=0, description="How long a replica being removed gets to finish its requests."
    )

    @model_validator(mode="after")
    def _look_back_spans_reports(self) -> RaySettings:
        """Serve averages the reports that arrived within the look-back period: with none in it, it has no
        load to act on (Ray 2.60 warns that this will become an error)."""
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s}) must be longer than metrics_interval_s "
                f"({self.metrics_interval_s})"
            )
        return self
