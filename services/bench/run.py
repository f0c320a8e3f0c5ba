"""`maas bench`: run the built-in benchmarks (every section, or the ones named)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from importlib import import_module

from services.bench.report import Section
from services.bench.settings import BenchConfig

SECTIONS: dict[str, str] = {
    "tokenizer": "services.bench.tokenizer:tokenizer_section",
    "vision": "services.bench.vision:vision_section",
    "transformer": "services.bench.transformer:transformer_section",
    "text": "services.bench.text:text_section",
    "gateway": "services.bench.gateway:gateway_section",
    "gateway-http": "services.bench.gateway:http_section",
    "ray": "services.bench.ray_hosting:ray_section",
    "overload": "services.bench.reliability:overload_section",
    "inline": "services.bench.reliability:inline_section",
    "startup": "services.bench.startup:startup_section",
    "latency": "services.bench.latency:latency_section",
    "tradeoffs": "services.bench.tradeoffs:tradeoffs_section",
}
"""Section name -> `module:function` measuring it, in the report's order. Imported when run: most need torch,
which `maas` itself must not import."""


def _section(name: str) -> Callable[[BenchConfig], Awaitable[Section]]:
    module, _, function = SECTIONS[name].partition(":")
    return getattr(import_module(module), function)


async def run_bench(config: BenchConfig, names: Sequence[str] = ()) -> list[Section]:
    """Measure the sections named (every one, in order, if none).

    Args:
        config: load points and timings.
        names: section names (keys of `SECTIONS`).

    Returns:
        The measured sections, in the report's order.
    """
    return [await _section(name)(config) for name in SECTIONS if not names or name in names]
