"""The benchmark report: `docs/benchmarks.md`, written by `make bench` itself."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.bench.loadgen import LoadResult


@dataclass
class Row:
    """One measured point of a section."""

    label: str
    result: LoadResult


@dataclass
class Section:
    """A benchmark scenario: a title, how to read it, its rows (or a markdown table of its own) and what to
    compare."""

    title: str
    note: str
    rows: list[Row] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    table: list[str] = field(default_factory=list)

    def row(self, label: str, concurrency: int) -> LoadResult:
        """The result of the row called `label` at `concurrency`."""
        return next(r.result for r in self.rows if r.label == label and r.result.concurrency == concurrency)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_revision(root: Path) -> str:
    """The short commit of `root`, marked if tracked files changed since."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    """One line describing this machine."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{_cpu_model()}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}"


def render(sections: list[Section], command: str, root: Path) -> str:
    """The whole report as markdown."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`maas bench`); do not edit by hand. Every number below comes from one run,",
        "side by side, on the machine named here: compare ratios within this page, not with other machines.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- git: {git_revision(root)}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- python: {platform.python_version()}",
        "",
    ]
    for section in sections:
        lines += render_section(section)
    return "\n".join(lines)


def render_section(section: Section) -> list[str]:
    """One section as markdown lines."""
    lines = [f"## {section.title}", "", section.note, ""]
    if section.table:
        lines += section.table
    else:
        lines += [
            "| what | concurrency | req/s | p50 ms | p95 ms | p99 ms | failed |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in section.rows:
            r = row.result
            lines.append(
                f"| {row.label} | {r.concurrency} | {r.throughput:,.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} "
                f"| {r.p99_ms:.2f} | {r.failed} |"
            )
    if section.findings:
        lines += ["", *(f"- {finding}" for finding in section.findings)]
    lines.append("")
    return lines


def replace_section(report: str, section: Section, command: str, root: Path) -> str:
    """`report` with `section` in place of its earlier section of the same title (else appended), stamped with
    the command, machine, commit and date it was measured with; the other sections are kept as they are."""
    lines = render_section(section)
    stamp = (
        f"_Measured alone by `{command}` on {machine()}, git {git_revision(root)}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC._"
    )
    text = "\n".join([lines[0], "", stamp, *lines[1:]])
    pattern = re.compile(rf"^## {re.escape(section.title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(report):
        return pattern.sub(lambda _: text + "\n", report, count=1).rstrip("\n") + "\n"
    return report.rstrip("\n") + "\n\n" + text
