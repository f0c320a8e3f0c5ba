"""`maas bench`: run every benchmark and write the report."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.bench.report import Section, render, replace_section
from services.bench.settings import BenchConfig
from services.bench.tokenizer import tokenizer_section
from services.common.settings import REPO_ROOT


async def run_bench(config: BenchConfig, output: Path, command: str) -> list[Section]:
    """Run every scenario, write the markdown report to `output` and return the sections."""
    # Imported here: these benchmarks need torch, which `maas` itself must not import.
    from services.bench.gateway import gateway_section
    from services.bench.ray_hosting import ray_section
    from services.bench.text import text_section
    from services.bench.transformer import transformer_section
    from services.bench.vision import vision_section

    sections = [
        await tokenizer_section(config),
        await vision_section(config),
        await transformer_section(config),
        await text_section(config),
        await gateway_section(config),
        await ray_section(config),
    ]
    await asyncio.to_thread(_write, output, render(sections, command, REPO_ROOT))
    return sections


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


async def run_tradeoffs(config: BenchConfig, output: Path, command: str) -> None:
    """Run the trade-offs section alone and put it into the report at `output` in place of its earlier one."""
    from services.bench.tradeoffs import tradeoffs_section

    section = await tradeoffs_section(config)
    report = await asyncio.to_thread(_read, output)
    await asyncio.to_thread(_write, output, replace_section(report, section, command, REPO_ROOT))
