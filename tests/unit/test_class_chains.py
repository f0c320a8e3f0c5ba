"""No class under services/ sits on a chain of more than two of the project's own base classes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import services

MOST_PROJECT_BASES = 2
PROJECT_PACKAGES = ("services", "maas")


def project_bases(cls: type) -> list[str]:
    """The project's classes among `cls`'s bases, all the way up (generated protobuf servicers count)."""
    return [
        f"{base.__module__}.{base.__qualname__}"
        for base in cls.__mro__[1:]
        if base.__module__.split(".")[0] in PROJECT_PACKAGES
    ]


def test_no_class_has_more_than_two_project_base_classes():
    modules = [info.name for info in pkgutil.walk_packages(services.__path__, "services.")]
    assert len(modules) > 50
    checked, too_deep = 0, {}
    for name in modules:
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if cls.__module__ != name:
                continue
            checked += 1
            bases = project_bases(cls)
            if len(bases) > MOST_PROJECT_BASES:
                too_deep[f"{name}.{cls.__qualname__}"] = bases
    assert checked > 100
    assert not too_deep, too_deep
