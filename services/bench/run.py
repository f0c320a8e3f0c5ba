"""`maas bench`: run every benchmark (or some of them) and write the report."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from services.bench.report import Section, merge, render
from services.bench.settings import BenchConfig
from services.common.settings import REPO_ROOT

SECTIONS = {
    "tokenizer": "services.bench.tokenizer:tokenizer_section",
    "vision": "services.bench.vision:vision_section",
    "transformer": "services.bench.transformer:transformer_section",
    "text": "services.bench.text:text_section",
    "gateway": "services.bench.gateway:gateway_section",
    "ray": "services.bench.ray_hosting:ray_section",
    "overload": "services.bench.reliability:overload_section",
    "inline": "services.bench.reliability:inline_section",
}
"""Every benchmark section, in report order: name -> `module:function` (imported when run: most need
torch, which `maas` itself must not import)."""


def _section(name: str) -> Callable[[BenchConfig], Awaitable[Section]]:
    module, function = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), function)


async def run_bench(config: BenchConfig, output: Path, command: str, only: Sequence[str] = ()) -> list[Section]:
    """Run every section, or only the named ones, and write the markdown report to `output`.

    Args:
        config: load points and timings.
        output: the report file.
        command: the command line, recorded in the report.
        only: section names (see `SECTIONS`); their results replace those sections of the report already
            in `output`, marked with this command and the date, and the rest of the report stays.

    Returns:
        The sections measured.
    """
    sections = [await _section(name)(config) for name in (only or SECTIONS)]
    await asyncio.to_thread(_write, output, sections, command, bool(only))
    return sections


def _write(path: Path, sections: list[Section], command: str, alone: bool) -> None:
    if alone and path.exists():
        text = merge(path.read_text(encoding="utf-8"), sections, command, REPO_ROOT)
    else:
        text = render(sections, command, REPO_ROOT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
