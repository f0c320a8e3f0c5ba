"""The gateway's routing file: named targets (gRPC addresses) and the target of every model.

```yaml
targets:
  transformer: {address: "dns:///transformer.maas.svc:50055"}
models:
  minilm_embed: {target: transformer}
```

Each model's route is a mapping, so later keys (a version pin, a weighted split between two
targets for a canary, a retry policy) can join `target` without changing the shape of the file.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RESERVED_MODELS = frozenset({"echo"})


class RoutingError(ValueError):
    """The routing file cannot be used; the message names the file and what is wrong."""


class Target(BaseModel):
    """Where a set of models is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(min_length=1, description="A gRPC target, e.g. dns:///tokenizer.maas.svc:50052.")


class ModelRoute(BaseModel):
    """How calls to one model are routed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, description="Name of the target serving the model.")


class Routing(BaseModel):
    """The whole routing file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: dict[str, Target]
    models: dict[str, ModelRoute]

    @model_validator(mode="after")
    def _consistent(self) -> Routing:
        unknown = sorted(
            f"{model} -> {route.target}" for model, route in self.models.items() if route.target not in self.targets
        )
        if unknown:
            raise ValueError(f"models routed to targets that are not defined: {', '.join(unknown)}")
        reserved = sorted(RESERVED_MODELS & set(self.models))
        if reserved:
            raise ValueError(f"{', '.join(reserved)} is served by the gateway itself and cannot be routed")
        return self

    def target_of(self, model: str) -> str | None:
        """The name of the target serving `model`, or None if it is not routed."""
        route = self.models.get(model)
        return route.target if route else None

    def models_of(self, target: str) -> list[str]:
        """The models routed to `target`, in file order."""
        return [model for model, route in self.models.items() if route.target == target]

    def with_addresses(self, addresses: dict[str, str]) -> Routing:
        """This routing with each target named in `addresses` pointed at `dns:///<address>`, and
        every other target dropped with its models (what `maas up` serves).

        Args:
            addresses: target name -> `host:port`.
        """
        targets = {name: Target(address=f"dns:///{addresses[name]}") for name in self.targets if name in addresses}
        models = {model: route for model, route in self.models.items() if route.target in targets}
        return Routing(targets=targets, models=models)

    def to_yaml(self) -> str:
        """The routing as a routing file's text."""
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def load_routing(path: Path) -> Routing:
    """Read and check a routing file.

    Raises:
        RoutingError: the file is missing, not YAML, or not a valid routing (the message says where).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutingError(f"routing file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RoutingError(f"routing file {path}: not YAML: {exc}") from None
    try:
        return Routing.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise RoutingError(f"routing file {path}: {problems}") from None
