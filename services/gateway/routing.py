"""The gateway's routing file: named targets (gRPC addresses) and how calls to every model are routed.

```yaml
targets:
  transformer: {address: "dns:///transformer.maas.svc:50055"}
  transformer-canary: {endpoints: ["10.0.0.7:50055", "10.0.0.8:50055"]}
models:
  minilm_embed: {target: transformer, version: 1, timeout_seconds: 5}
  minilm_sentiment:
    split:
      - {target: transformer, version: 1, weight: 90}
      - {target: transformer-canary, version: 2, weight: 10}
    retries: {attempts: 3}
```

The file is read at start and again whenever its content changes (see `services.gateway.watch`);
`load_routing` / `parse_routing` check a whole file before anything uses it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RESERVED_MODELS = frozenset({"echo"})


class RoutingError(ValueError):
    """The routing file cannot be used; the message names the file and what is wrong."""


def _version(value: Any) -> Any:
    """Versions are integers; YAML may give them as numbers or strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value and not value.isdigit():
        raise ValueError(f"a version is a non-negative integer, got {value!r}")
    return value


def _ip_endpoint(endpoint: str) -> tuple[int, str]:
    """The IP version and gRPC address of `host:port` (IPv6 as `[addr]:port`).

    Raises:
        ValueError: not an IP literal with a port.
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(
            f"endpoint {endpoint!r}: endpoints are IP addresses; for a name use address: dns:///{endpoint}, "
            "which resolves every address of the name"
        ) from None
    return address.version, f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


class Target(BaseModel):
    """Where a set of models is served: one gRPC target, or several IP endpoints (round_robin over them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        None,
        min_length=1,
        description="A gRPC target, e.g. dns:///tokenizer.maas.svc:50052 (every address of the name).",
    )
    endpoints: tuple[str, ...] | None = Field(
        None, min_length=1, description="Several replicas as IP host:port; calls are spread over the live ones."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="gRPC metadata sent with every call to the target, e.g. {application: vision} for Serve's proxy.",
    )
    plaintext: bool = Field(
        False,
        description="Dial without TLS even when the gateway has TLS files for its targets (Serve's own gRPC "
        "proxy serves no TLS).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Target:
        if (self.address is None) == (self.endpoints is None):
            raise ValueError("give either address or endpoints")
        if self.endpoints is not None:
            versions = {_ip_endpoint(endpoint)[0] for endpoint in self.endpoints}
            if len(versions) > 1:
                raise ValueError("endpoints mix IPv4 and IPv6 addresses")
        return self

    @property
    def grpc_target(self) -> str:
        """The target string a channel dials (`ipv4:a:1,b:2` for endpoints)."""
        if self.address is not None:
            return self.address
        parsed = [_ip_endpoint(endpoint) for endpoint in self.endpoints or ()]
        return f"ipv{parsed[0][0]}:" + ",".join(address for _version, address in parsed)


class Backend(BaseModel):
    """One side of a traffic split: a target, the version asked of it, and its share of the calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, description="Name of the target.")
    version: str = Field("", description="Version asked of the target by calls that name none ('' = its default).")
    weight: int = Field(1, ge=0, description="Relative share of the calls that name no version.")

    _check_version = field_validator("version", mode="before")(_version)


class Retries(BaseModel):
    """Retries of calls that the target surely did not run, within a budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(3, ge=1, le=10, description="Tries in all, the first included; 1 turns retries off.")
    backoff_seconds: float = Field(
        0.05, gt=0, le=10, description="Wait before retrying when no endpoint could be reached; doubles, at most 1 s."
    )
    budget_ratio: float = Field(0.2, ge=0, le=1, description="Retries may add this fraction of the route's calls...")
    budget_min_per_second: float = Field(10.0, ge=0, description="...plus this many retries per second.")
    in_flight: bool = Field(
        False,
        description=(
            "Also retry calls that were sent and then lost with their replica (UNAVAILABLE, may have run): "
            "only for models without side effects, since such a call may run twice."
        ),
    )


class ModelRoute(BaseModel):
    """How calls to one model are routed: one target (optionally a pinned version) or a weighted split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str | None = Field(None, min_length=1, description="Name of the target serving the model.")
    version: str = Field("", description="Version pinned for calls that name none ('' = the target's default).")
    split: tuple[Backend, ...] | None = Field(
        None, min_length=2, description="Weighted backends (a canary); the first also answers metadata and readiness."
    )
    timeout_seconds: float | None = Field(None, gt=0, description="Longest a downstream call of this model may take.")
    retries: Retries = Field(default_factory=Retries)

    _check_version = field_validator("version", mode="before")(_version)

    @model_validator(mode="after")
    def _one_form(self) -> ModelRoute:
        if (self.target is None) == (self.split is None):
            raise ValueError("give either target (with an optional version) or split")
        if self.split is not None and self.version:
            raise ValueError("version goes on each backend of a split")
        if self.split is not None and sum(backend.weight for backend in self.split) == 0:
            raise ValueError("the weights of a split add up to 0")
        return self

    @property
    def backends(self) -> tuple[Backend, ...]:
        """Every backend of the route, the primary one first."""
        if self.split is not None:
            return self.split
        return (Backend(target=self.target or "", version=self.version),)


class Routing(BaseModel):
    """The whole routing file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: dict[str, Target]
    models: dict[str, ModelRoute]

    @model_validator(mode="after")
    def _consistent(self) -> Routing:
        unknown = sorted(
            f"{model} -> {backend.target}"
            for model, route in self.models.items()
            for backend in route.backends
            if backend.target not in self.targets
        )
        if unknown:
            raise ValueError(f"models routed to targets that are not defined: {', '.join(unknown)}")
        reserved = sorted(RESERVED_MODELS & set(self.models))
        if reserved:
            raise ValueError(f"{', '.join(reserved)} is served by the gateway itself and cannot be routed")
        return self

    def target_of(self, model: str) -> str | None:
        """The name of the primary target serving `model`, or None if it is not routed."""
        route = self.models.get(model)
        return route.backends[0].target if route else None

    def models_of(self, target: str) -> list[str]:
        """The models routed (wholly or in part) to `target`, in file order."""
        return [model for model, route in self.models.items() if any(b.target == target for b in route.backends)]

    def with_addresses(self, addresses: dict[str, str]) -> Routing:
        """This routing with each target named in `addresses` pointed at `dns:///<address>`, every other
        target dropped, and the models routed to a dropped target dropped (what `maas up` serves).

        Args:
            addresses: target name -> `host:port`.
        """
        targets = {name: Target(address=f"dns:///{addresses[name]}") for name in self.targets if name in addresses}
        models = {
            model: route
            for model, route in self.models.items()
            if all(backend.target in targets for backend in route.backends)
        }
        return Routing(targets=targets, models=models)

    def to_yaml(self) -> str:
        """The routing as a routing file's text."""
        return yaml.safe_dump(self.model_dump(exclude_defaults=True), sort_keys=False)


def parse_routing(text: str, source: str) -> Routing:
    """Check a routing file's text.

    Args:
        text: the file's content.
        source: where it came from, for messages (the path).

    Raises:
        RoutingError: not YAML, or not a valid routing (the message says where).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutingError(f"routing file {source}: not YAML: {exc}") from None
    try:
        return Routing.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise RoutingError(f"routing file {source}: {problems}") from None


def read_routing_text(path: Path) -> str:
    """The text of a routing file.

    Raises:
        RoutingError: the file cannot be read as UTF-8 text.
    """
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutingError(f"routing file {path}: {getattr(exc, 'strerror', None) or exc}") from None


def load_routing(path: Path) -> Routing:
    """Read and check a routing file.

    Raises:
        RoutingError: the file is missing, not YAML, or not a valid routing (the message says where).
    """
    return parse_routing(read_routing_text(path), str(path))
