"""How a service is declared: once, in its torch-free `spec.py`, read by everything that serves it.

A `ServiceSpec` names the service, its settings (env prefix and default port), the models it serves
(model classes, imported only when served), its typed API, and the gateway pipelines that end at its
models. The CLI, both hostings, the gateway's defaults and the generated files (Serve config, routing
file, the chart's list of services) derive from the specs.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.model import TensorSpec
from services.common.settings import ServedModelSettings, ServiceSettings

MODEL_ATTRIBUTES = ("name", "inputs", "outputs", "load", "predict")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"


def import_object(reference: str, app_dir: str = "") -> Any:
    """The object a `module:attribute` reference names.

    Args:
        reference: e.g. `my_package.my_module:MyModel`.
        app_dir: a directory put first on `sys.path` before importing (where the module lives).

    Raises:
        ValueError: the reference is not `module:attribute`.
        ImportError: the module cannot be imported, or has no such attribute.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{reference!r} is not module:attribute, e.g. my_package.my_module:MyModel")
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"module {module_name} has no {attribute}") from None


@dataclass(frozen=True)
class ModelSpec:
    """One model a service serves.

    Attributes:
        name: its v2 name (its directory in the model repository).
        model: its class, as `module:Class` (see `services.common.model`).
        make: the command that puts a first version in the repository (for messages).
        app_dir: a directory to import the class from (a user's package that is not installed).
    """

    name: str
    model: str
    make: str = ""
    app_dir: str = ""

    def load_class(self) -> type:
        """Import the model class.

        Raises:
            ValueError, ImportError: see `import_object`.
        """
        return import_object(self.model, self.app_dir)


@dataclass(frozen=True)
class TypedSpec:
    """A service's typed API (`maas.<service>.v1`).

    Attributes:
        proto: the generated `*_pb2` module, e.g. `maas.vision.v1.vision_pb2`.
        service: the service's name in it, e.g. `VisionService`.
        servicer: its servicer class, `module:Class`, built as `Class(models, settings)`.
        models: RPC name -> the v2 model it serves (metrics label the call with it).
    """

    proto: str
    service: str
    servicer: str
    models: Mapping[str, str]

    @property
    def grpc_module(self) -> str:
        """The generated `*_pb2_grpc` module."""
        return f"{self.proto}_grpc"

    def descriptor(self) -> Any:
        """The service's protobuf `ServiceDescriptor`."""
        return importlib.import_module(self.proto).DESCRIPTOR.services_by_name[self.service]

    @property
    def full_name(self) -> str:
        """The service's full name, e.g. `maas.vision.v1.VisionService`."""
        return self.descriptor().full_name

    def stub(self) -> Any:
        """The generated client stub class."""
        return getattr(importlib.import_module(self.grpc_module), f"{self.service}Stub")

    def message(self, name: str) -> Any:
        """A message class of the proto module, e.g. `ClassifyTextRequest`."""
        return getattr(importlib.import_module(self.proto), name)

    @property
    def servicer_function(self) -> str:
        """Import path of the generated `add_<Service>Servicer_to_server` (Serve's gRPC proxy takes these)."""
        return f"{self.grpc_module}.add_{self.service}Servicer_to_server"

    def add_to_server(self) -> Any:
        """The generated `add_<Service>Servicer_to_server` function."""
        return getattr(importlib.import_module(self.grpc_module), f"add_{self.service}Servicer_to_server")


@dataclass(frozen=True)
class Pipeline:
    """A gateway pipeline model: text -> the tokenizer -> `model`; it answers `model`'s `output`."""

    name: str
    model: str
    output: TensorSpec


@dataclass(frozen=True)
class ServiceSpec:
    """A service, declared once.

    Attributes:
        name: the service name (`maas run <name>`, its Serve application, its chart block).
        settings: its settings class (env prefix, default port, limits).
        models: the models it serves (beside `echo`, which every service serves).
        typed: its typed API, if it has one.
        pipelines: gateway pipelines that end at one of its models.
        torch: its models run on torch: threads and device come from its settings, and Ray replicas may
            take GPUs.
        server: `module:function` building its server from its settings, for a service that is not a
            service of models (the gateway); empty: built from `models` and `typed`.
        group: `maas up` starts services group by group, lowest first, each ready before the next.
        env_prefix: overrides the settings class's env prefix (`maas serve`: `MAAS_<NAME>_`).
    """

    name: str
    settings: type[ServiceSettings]
    models: tuple[ModelSpec, ...] = ()
    typed: TypedSpec | None = None
    pipelines: tuple[Pipeline, ...] = ()
    torch: bool = False
    server: str = ""
    group: int = 1
    env_prefix: str = field(default="")

    @property
    def prefix(self) -> str:
        """The env prefix its settings are read with."""
        return self.env_prefix or self.settings.model_config["env_prefix"]

    @property
    def port(self) -> int:
        """Its default gRPC port (the contract's)."""
        return self.settings.model_fields["port"].default

    @property
    def model_names(self) -> list[str]:
        """The v2 names of its models."""
        return [model.name for model in self.models]

    def read_settings(self, **overrides: Any) -> ServiceSettings:
        """Its settings from the environment, then `overrides`.

        Raises:
            pydantic.ValidationError: a value is invalid.
        """
        if self.env_prefix:
            return self.settings(_env_prefix=self.env_prefix, **overrides)
        return self.settings(**overrides)


def user_spec(reference: str, name: str = "", app_dir: str = "") -> ServiceSpec:
    """The spec of a model you serve yourself (`maas serve module:Class`): one model, the v2 API, and
    settings read from `MAAS_<NAME>_*` (the name upper-cased, `-` as `_`).

    Args:
        reference: the model class, `module:Class` (see `services.common.model`).
        name: the name to serve it under (its service, its v2 model, its directory in the repository);
            default: the class's `name`.
        app_dir: a directory to import the module from (default: only what is importable already).

    Returns:
        The service's spec.

    Raises:
        ImportError: the module or class cannot be imported.
        ValueError: the reference is malformed, the class lacks part of the lifecycle, or the name is not
            letters, digits, `_` and `-`.
    """
    cls = import_object(reference, app_dir)
    missing = [attribute for attribute in MODEL_ATTRIBUTES if not hasattr(cls, attribute)]
    if missing:
        raise ValueError(
            f"{reference} is not a model class: it has no {', '.join(missing)} (see services.common.model)"
        )
    name = name or cls.name
    if not name:
        raise ValueError(f"{reference} names no model: give one with --name")
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(
            f"model name {name!r}: use letters, digits, '_' and '-' (at most 63), starting with one of the first two"
        )
    prefix = "MAAS_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_"
    return ServiceSpec(
        name=name,
        settings=ServedModelSettings,
        models=(ModelSpec(name, reference, app_dir=app_dir),),
        torch=importlib.util.find_spec("torch") is not None,
        env_prefix=prefix,
    )
