"""`docs/reliability.md`, written by `make reliability` from its last run."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from pathlib import Path

from services.bench.report import git_revision, machine
from services.reliability.scenarios import Durations, Figure, Step


def render(
    steps: list[Step], durations: Durations, command: str, root: Path, seconds: float, load: tuple[str, str]
) -> str:
    """The report as markdown: how the run went, a summary of every figure against its target, then
    each scenario's setup and details."""
    lines = [
        "# Reliability",
        "",
        "Written by `make reliability` (`python -m services.reliability`); do not edit by hand. Every figure",
        "below comes from the one run described here, on loopback, every process started and stopped by its",
        "pid. Timings depend on how busy the machine was: the load averages say. What maas promises for",
        "hostile input and faults, and how each promise is enforced (limits per request, memory per request,",
        "the event loop, losing a service), is in [hostile-input.md](hostile-input.md).",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- git: {git_revision(root)}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {seconds / 60:.1f} minutes",
        f"- load average (1 / 5 / 15 min): {load[0]} at the start, {load[1]} at the end",
        f"- python: {platform.python_version()}",
        "",
        "## Summary",
        "",
        *(
            []
            if durations.gate_performance
            else [
                "A short run: it gates on lost calls, errors and recovery, and reports latencies and memory growth",
                "without gating on them (`not gated`); the full `make reliability` gates on every figure.",
                "",
            ]
        ),
        "| # | scenario | figure | measured | target | met |",
        "|---:|---|---|---:|---|---|",
    ]
    for number, step in enumerate(steps, 1):
        for figure in step.figures:
            lines.append(
                f"| {number} | {step.title} | {figure.name} | {figure.shown()} | {figure.target} | "
                f"{_met(figure, durations)} |"
            )
    for number, step in enumerate(steps, 1):
        lines += ["", f"## {number}. {step.title}", "", step.setup, ""]
        lines += [f"- {detail}" for detail in step.details]
    return "\n".join(lines) + "\n"


def _met(figure: Figure, durations: Durations) -> str:
    if figure.ok:
        return "yes"
    return "no (not gated)" if figure.performance and not durations.gate_performance else "**no**"
