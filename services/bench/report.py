"""The benchmark report: `docs/benchmarks.md`, written by `make bench` itself."""

from __future__ import annotations

import os
import platform
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
    """A benchmark scenario: a title, how to read it, its rows and what to compare."""

    title: str
    note: str
    rows: list[Row] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

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


def _section_lines(section: Section) -> list[str]:
    lines = [
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
    return lines


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(sections: list[Section], command: str, root: Path) -> str:
    """The whole report as markdown."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`maas bench`); do not edit by hand. Every number below comes from one run,",
        "side by side, on the machine named here: compare ratios within this page, not with other machines.",
        "A section run alone (`maas bench --section NAME`) says so under its title, with its own command and date.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- git: {git_revision(root)}",
        f"- date: {_now()}",
        f"- python: {platform.python_version()}",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", "", section.note, "", *_section_lines(section), ""]
    return "\n".join(lines)


def merge(report: str, sections: list[Section], command: str, root: Path) -> str:
    """`report` with `sections` (run alone) in place of its sections of the same titles, or added at its
    end; each marked with the command, date and git revision it was measured with.

    Args:
        report: an existing report (see `render`).
        sections: the sections measured now.
        command: the command line that measured them.
        root: the repository, for its git revision.
    """
    for section in sections:
        heading = f"## {section.title}"
        block = "\n".join(
            [
                heading,
                "",
                f"Run alone: `{command}`, {_now()}, git {git_revision(root)}, on {machine()}.",
                "",
                section.note,
                "",
                *_section_lines(section),
                "",
            ]
        )
        start = report.find(f"\n{heading}\n")
        if start < 0:
            report = report.rstrip("\n") + "\n\n" + block
            continue
        end = report.find("\n## ", start + 1)
        report = report[: start + 1] + block + (report[end + 1 :] if end >= 0 else "")
    return report
