"""docs/settings.md is generated from the settings classes: fresh, complete, and naming the variables the
classes really read."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from services.catalog import SERVICES
from services.cli import settings_reference
from services.cli.connection import API_KEY_ENV
from services.cli.generate import stale
from services.common.settings import (
    EchoSettings,
    ProcessSettings,
    RaySettings,
    ServedModelSettings,
    TracingSettings,
)
from services.ray.environment import LOCAL_RAY, TRANSPORT

PAGE = settings_reference.SETTINGS_PAGE
CLASSES: list[tuple[type[BaseSettings], str]] = [
    *((spec.settings, spec.prefix) for spec in SERVICES.values()),
    (EchoSettings, "MAAS_ECHO_"),
    (ServedModelSettings, "MAAS_<NAME>_"),
    (RaySettings, "MAAS_RAY_"),
    (TracingSettings, "OTEL_"),
    (ProcessSettings, "MAAS_"),
]
GLOBAL = {"model_repository": "MAAS_MODEL_REPOSITORY", "log_format": "MAAS_LOG_FORMAT"}


def listed() -> set[str]:
    """The variables the committed page lists in its tables."""
    return set(re.findall(r"^\| `([A-Z0-9_<>]+)` \|", PAGE.read_text(encoding="utf-8"), flags=re.MULTILINE))


def test_the_settings_page_is_a_fresh_generation():
    assert PAGE not in stale(), "docs/settings.md is stale: run `maas generate`"


def test_a_changed_setting_makes_the_page_stale(monkeypatch: pytest.MonkeyPatch):
    field = SERVICES["vision"].settings.model_fields["max_images"]
    monkeypatch.setattr(field, "description", field.description + " Changed.")
    assert PAGE in stale()


def test_the_page_lists_every_field_of_every_settings_class_with_a_description_and_nothing_else():
    expected = {API_KEY_ENV, *LOCAL_RAY, *TRANSPORT}
    for settings, prefix in CLASSES:
        for name in settings.model_fields:
            expected.add(GLOBAL.get(name, f"{prefix}{name.upper()}"))
            described = any(
                name in getattr(cls, "model_fields", {}) and cls.model_fields[name].description
                for cls in settings.__mro__
            )
            assert described, f"{settings.__name__}.{name} has no description for docs/settings.md"
    assert listed() == expected


@pytest.mark.parametrize(("settings", "prefix"), CLASSES, ids=lambda value: getattr(value, "__name__", value))
def test_each_numeric_or_boolean_variable_the_page_names_is_read_by_its_class(
    settings: type[BaseSettings], prefix: str, monkeypatch: pytest.MonkeyPatch
):
    """Setting the listed variable to a value its type cannot take stops the class: it reads that name."""
    concrete = prefix.replace("<NAME>", "MY_MODEL")
    for name, field in settings.model_fields.items():
        if field.annotation not in (int, float, bool, int | None):
            continue
        variable = GLOBAL.get(name, f"{concrete}{name.upper()}")
        monkeypatch.setenv(variable, "not-a-value")
        with pytest.raises(ValidationError, match=name):
            settings(_env_prefix=concrete) if settings is ServedModelSettings else settings()
        monkeypatch.delenv(variable)
