"""Files derived from the services' specs are fresh, and derive every service from the specs."""

from __future__ import annotations

import yaml

from services.catalog import SERVICES
from services.cli.generate import CHART_SERVICES, stale
from services.gateway.routing import load_routing
from services.gateway.spec import ROUTING_FILE


def test_generated_files_are_fresh():
    assert not stale(), f"stale: {', '.join(str(path) for path in stale())}; run `maas generate`"


def test_the_chart_and_the_default_routing_list_every_service_and_model_of_the_specs():
    chart = yaml.safe_load(CHART_SERVICES.read_text())
    assert set(chart) == set(SERVICES)
    for name, spec in SERVICES.items():
        assert chart[name] == {
            "port": spec.port,
            "prefix": spec.prefix,
            "models": spec.model_names,
            "torch": spec.torch,
        }
    routing = load_routing(ROUTING_FILE)
    for spec in SERVICES.values():
        for model in spec.model_names:
            assert routing.target_of(model) == spec.name
            assert routing.targets[spec.name].address == f"dns:///127.0.0.1:{spec.port}"
