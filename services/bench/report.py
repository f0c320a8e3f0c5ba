"""The benchmark report: `docs/benchmarks.md` (when `maas bench --output` asks for it), a chart per section,
and the same rows as a table, JSON or CSV for the terminal."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.bench.loadgen import LoadResult

PLOTS_DIR = "benchmarks"
"""Where a report's charts go, beside the report."""
TABLE_HEADER = [
    "| what | concurrency | req/s | p50 ms | p95 ms | p99 ms | failed |",
    "|---|---:|---:|---:|---:|---:|---:|",
]


@dataclass
class Row:
    """One measured point of a section."""

    label: str
    result: LoadResult


@dataclass
class Section:
    """A benchmark scenario: a title, how to read it, its rows, a table of other measurements (markdown
    lines), and what to compare.

    Its chart is `figure` (drawing into the PNG path it is given) when the section has one of its own,
    described by `caption`; otherwise its rows' throughput and latency by concurrency.
    """

    title: str
    note: str
    rows: list[Row] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    table: list[str] = field(default_factory=list)
    figure: Callable[[Path], None] | None = None
    caption: str = "throughput and latency by concurrency"

    def row(self, label: str, concurrency: int) -> LoadResult:
        """The result of the row called `label` at `concurrency`."""
        return next(r.result for r in self.rows if r.label == label and r.result.concurrency == concurrency)

    @property
    def slug(self) -> str:
        """The section's title as a file name."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


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


def _table(section: Section) -> list[str]:
    lines = list(TABLE_HEADER)
    for row in section.rows:
        r = row.result
        lines.append(
            f"| {row.label} | {r.concurrency} | {r.throughput:,.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.failed} |"
        )
    return lines


def _tables(section: Section) -> list[str]:
    """The section's own table, then its rows' table (each only if it has one)."""
    lines = [*section.table, *([""] if section.table and section.rows else [])]
    return lines + (_table(section) if section.rows else [])


def render_section(section: Section, provenance: str, chart: str | None = None) -> str:
    """One section as markdown: title, how it was measured, note, chart, table and findings.

    Args:
        section: the measured section.
        provenance: the command, revision, date and machine it was measured by.
        chart: the chart's path relative to the report, if there is one.
    """
    lines = [f"## {section.title}", "", f"_{provenance}_", "", section.note, ""]
    if chart:
        lines += [f"![{section.title}: {section.caption}]({chart})", ""]
    lines += _tables(section)
    if section.findings:
        lines += ["", *(f"- {finding}" for finding in section.findings)]
    return "\n".join(lines) + "\n"


def _header() -> str:
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Written by `make bench` (`maas bench --output docs/benchmarks.md`); do not edit by hand. Every number",
            "in a section comes from one run, side by side, on the machine its first line names; a section rerun",
            "alone (`maas bench --section NAME --output ...`) replaces only itself and says when and where it was",
            "measured. Compare ratios within a section, not with other machines or sections.",
            "",
        ]
    )


def _sections_of(text: str) -> dict[str, str]:
    """The `## ` sections of an existing report, by title, in order."""
    _, *blocks = re.split(r"^(?=## )", text, flags=re.M)
    sections: dict[str, str] = {}
    for block in blocks:
        title, _, rest = block.rstrip("\n").partition("\n")
        sections[title[3:].strip()] = f"{title}\n{rest}\n"
    return sections


def write_report(output: Path, sections: list[Section], command: str, root: Path) -> None:
    """Write `sections` into the report at `output`, with a chart per section in `benchmarks/` beside it.

    A section already in the report is replaced where it stands; the report's other sections are kept,
    so one section can be measured again alone.

    Args:
        output: the markdown report.
        sections: what was measured.
        command: the command line that measured them.
        root: the repository, for the revision.
    """
    provenance = (
        f"Measured by `{command}` at git {git_revision(root)}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {machine()}, "
        f"python {platform.python_version()}."
    )
    kept = _sections_of(output.read_text(encoding="utf-8")) if output.exists() else {}
    output.parent.mkdir(parents=True, exist_ok=True)
    for section in sections:
        chart = output.parent / PLOTS_DIR / f"{section.slug}.png"
        plot(section, chart)
        kept[section.title] = render_section(section, provenance, f"{PLOTS_DIR}/{chart.name}")
    output.write_text(_header() + "\n".join(kept.values()), encoding="utf-8")


def load_pyplot():
    """matplotlib's pyplot on its file-only backend (Agg), imported when a chart is drawn, not before."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot(section: Section, path: Path) -> None:
    """Draw a section's chart into a PNG: its own `figure` if it has one, otherwise its throughput and latency
    by concurrency, one series per row label.

    Args:
        section: the section.
        path: the PNG to write.
    """
    if section.figure is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        section.figure(path)
        return
    pyplot = load_pyplot()
    series: dict[str, list[LoadResult]] = {}
    for row in section.rows:
        series.setdefault(row.label, []).append(row.result)
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for label, results in series.items():
        results = sorted(results, key=lambda r: r.concurrency)
        x = [r.concurrency for r in results]
        line = left.plot(x, [r.throughput for r in results], marker="o", label=label)[0]
        right.plot(x, [r.p50_ms for r in results], marker="o", color=line.get_color())
        right.plot(x, [r.p99_ms for r in results], marker="x", linestyle="--", color=line.get_color())
    left.set(title="throughput", xlabel="concurrency", ylabel="requests/s", xscale="log")
    right.set(title="latency (p50 solid, p99 dashed)", xlabel="concurrency", ylabel="ms", xscale="log", yscale="log")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
    figure.legend(loc="lower center", ncol=min(3, len(series)), fontsize="small", frameon=False)
    figure.suptitle(section.title)
    figure.tight_layout(rect=(0, 0.06 + 0.04 * ((len(series) - 1) // 3), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


ROW_FIELDS = [
    "section",
    "what",
    "concurrency",
    "completed",
    "failed",
    "seconds",
    "req_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
]


def _records(sections: list[Section]) -> list[dict]:
    return [
        {
            "section": section.title,
            "what": row.label,
            **{key: value for key, value in asdict(row.result).items() if key != "concurrency"},
            "concurrency": row.result.concurrency,
            "req_per_s": row.result.throughput,
        }
        for section in sections
        for row in section.rows
    ]


def as_text(sections: list[Section], form: str) -> str:
    """The sections' rows for a terminal: `table` (markdown tables with findings), `json` or `csv`.

    Args:
        sections: what was measured.
        form: `table`, `json` or `csv`.
    """
    if form == "json":
        return json.dumps(
            [{"title": s.title, "findings": s.findings, "rows": _records([s])} for s in sections], indent=2
        )
    if form == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(_records(sections))
        return buffer.getvalue().rstrip("\n")
    blocks = []
    for section in sections:
        findings = [f"- {finding}" for finding in section.findings]
        blocks.append("\n".join([f"## {section.title}", "", *_tables(section), *(["", *findings] if findings else [])]))
    return "\n\n".join(blocks)
