"""`docs/peers.md` and its plots, written from one `make bench-peers` run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.bench.peers.run import CLIENTS, IN_PROCESS, Measurement, ModelRun
from services.bench.report import git_revision, load_pyplot, machine

PRIMARY = "maas grpc"
FOCUS = 16
"""The concurrency the summary compares at."""


@dataclass(frozen=True)
class Context:
    """What the page says about the run besides the numbers."""

    command: str
    timing: str
    versions: dict[str, str]
    load_before: str
    load_after: str
    minutes: float


def _find(run: ModelRun, system: str, client: str, concurrency: int) -> Measurement | None:
    return next(
        (
            m
            for m in run.measurements
            if (m.system, m.client, m.concurrency) == (system, client, concurrency) and not m.error
        ),
        None,
    )


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(a: Measurement | None, b: Measurement | None) -> str:
    if a is None or b is None or not b.throughput:
        return "—"
    return f"{a.throughput / b.throughput:.2f}x"


def _systems(run: ModelRun) -> list[str]:
    seen = dict.fromkeys(m.system for m in run.measurements if m.system != IN_PROCESS)
    return list(seen)


def summary(run: ModelRun, concurrency: int = FOCUS) -> list[str]:
    """Markdown lines: every system at `concurrency`, both clients side by side, and maas grpc's ratios."""
    lines = [
        f"| {run.model}, concurrency {concurrency} | perf_analyzer req/s | p99 ms | CPU ms/req "
        "| loadgen req/s | p99 ms | CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system in [IN_PROCESS, *_systems(run)]:
        cells = []
        for client in CLIENTS:
            m = _find(run, system, "-" if system == IN_PROCESS else client, concurrency)
            if m is None:
                cells += ["—", "—", "—"]
            else:
                cells += [_number(m.throughput), _number(m.p99_ms, 1), _number(m.cpu_ms, 2)]
        lines.append(f"| {system} | {' | '.join(cells)} |")
    lines.append("")
    limit = _find(run, IN_PROCESS, "-", concurrency)
    for client in CLIENTS:
        ours = _find(run, PRIMARY, client, concurrency)
        against = ", ".join(
            f"{_ratio(ours, _find(run, system, client, concurrency))} {system}'s"
            for system in _systems(run)
            if system != PRIMARY
        )
        lines.append(
            f"- {client}: maas grpc's req/s are {against}, and {_ratio(ours, limit)} the in-process model's "
            f"at batch {concurrency}."
        )
    return lines


def _table(run: ModelRun) -> list[str]:
    lines = [
        "| system | client | concurrency | req/s | p50 ms | p95 ms | p99 ms | server CPU ms/req | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = [IN_PROCESS, *_systems(run)]
    for m in sorted(run.measurements, key=lambda m: (m.concurrency, m.client, order.index(m.system))):
        if m.error:
            lines.append(f"| {m.system} | {m.client} | {m.concurrency} | — | — | — | — | — | {m.error} |")
            continue
        lines.append(
            f"| {m.system} | {m.client} | {m.concurrency} | {m.throughput:,.0f} | {m.p50_ms:.2f} | {m.p95_ms:.2f} "
            f"| {m.p99_ms:.2f} | {_number(m.cpu_ms, 3)} | {m.failed} |"
        )
    return lines


def plot(run: ModelRun, path: Path) -> None:
    """p99 latency against throughput: a line per system and client (solid: perf_analyzer, dashed:
    the load generator, dotted: the in-process model), points at each concurrency."""
    pyplot = load_pyplot()
    figure, axes = pyplot.subplots(figsize=(9, 5.5))
    colors = pyplot.get_cmap("tab10")
    styles = {"perf_analyzer": "-", "loadgen": "--", "-": ":"}
    for index, system in enumerate([IN_PROCESS, *_systems(run)]):
        for client in ("-",) if system == IN_PROCESS else CLIENTS:
            measured = sorted(
                (m for m in run.measurements if m.system == system and m.client == client and not m.error),
                key=lambda m: m.concurrency,
            )
            if not measured:
                continue
            points = [(m.throughput, m.p99_ms) for m in measured]
            label = system if system == IN_PROCESS else f"{system} ({client})"
            color = "black" if system == IN_PROCESS else colors(index)
            axes.plot(*zip(*points, strict=True), styles[client], marker="o", color=color, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("throughput (requests/s)")
    axes.set_ylabel("p99 latency (ms)")
    concurrencies = ", ".join(map(str, sorted({m.concurrency for m in run.measurements})))
    axes.set_title(f"{run.model}: p99 latency against throughput at concurrency {concurrencies}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def render(runs: list[ModelRun], context: Context, root: Path, plots: dict[str, str]) -> str:
    """The whole page as markdown.

    Args:
        runs: every model's measurements.
        context: command, versions, machine load.
        root: the repository (for its git revision).
        plots: model -> the plot's path relative to the page.
    """
    lines = [
        "# maas beside its peers",
        "",
        "Written by `make bench-peers` (`python -m services.bench.peers`); do not edit by hand. Every number",
        "comes from one run on the machine named here, systems alternating: compare within this page.",
        "",
        f"- command: `{context.command}`",
        f"- machine: {machine()}",
        f"- load average (1, 5, 15 min) before: {context.load_before}; after: {context.load_after}",
        f"- git: {git_revision(root)}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; the run took {context.minutes:.0f} min",
        *(f"- {name}: {version}" for name, version in context.versions.items()),
        "",
        "## How it was measured",
        "",
        "- **Same weights, same code, same request.** Every system serves the version maas serves by default (its",
        "  fp32 torch weights; `served_source` in `services/bench/peers/run.py`) with the",
        "  project's own model code (`services/bench/peers/models.py`) on one torch thread; the request is the",
        "  committed perf_analyzer input (`scripts/perf_analyzer/<model>.json`), batch of one. Each system's answer",
        "  is checked against the in-process model before the run (largest difference below).",
        "- **Systems.** maas grpc: `maas run <service>` with its defaults (dynamic batching up to 32 rows).",
        "  maas gateway: `maas run gateway` routing to that same process (CPU counts both). maas ray: `maas run ray`",
        "  hosting the service alone (one replica behind the maas front). Triton 2.51: `tritonserver` from PyPI",
        "  nvidia-pytriton 0.7.0, Python backend (`scripts/peers/triton_model.py`), one instance, dynamic batching",
        "  (max 32, 100 µs). KServe 0.21: its ModelServer over v2 gRPC (`scripts/peers/kserve_server.py`), one",
        "  request per predict call. Ray Serve proxy: Serve's native gRPC proxy in front of a deployment with",
        "  `@serve.batch` (max 32, 100 µs; `scripts/peers/serve_app.py`), on its own local Ray.",
        "- **Clients.** Stock `perf_analyzer` 2.41 (C++, synchronous, one thread per request in flight; three",
        "  windows per point) and the project's load generator (`services/bench/loadgen.py`, one grpc.aio",
        "  channel, Python). Both run on the same 2 cores as the servers, so a client's own CPU takes from them.",
        f"  Each point: {context.timing}.",
        "- **Server CPU per request.** User plus system time of the server's process trees from /proc (Triton's",
        "  Python stubs, Ray's raylet and workers included) during steady load, divided by the requests served then.",
        "- **In-process** is the model called directly at batch = concurrency: the most a server could reach.",
        "- **Rerun** on a quiet machine: `make bench-peers` (the first time it installs the peers into `.peers/`,",
        "  a few minutes). One model or load point: `python -m services.bench.peers --model fashion_cnn",
        "  --concurrency 16 --output /tmp/peers.md`. The servers' logs go to a temporary directory.",
        "",
        "## Summary",
        "",
    ]
    for run in runs:
        lines += [*summary(run), ""]
    for run in runs:
        lines += [f"## {run.model} (version {run.version})", "", f"Request: {run.request}.", ""]
        lines += [f"![p99 latency against throughput]({plots[run.model]})", ""]
        checked = ", ".join(f"{system} {difference:.1e}" for system, difference in run.output_differences.items())
        lines += [f"Largest output difference from the in-process model: {checked}.", ""]
        for system, reason in run.not_started.items():
            lines += [f"- {system} did not start: {reason}"]
        lines += [*_table(run), ""]
    return "\n".join(lines)
