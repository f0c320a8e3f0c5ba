"""`make reliability`: run every scenario once and write docs/reliability.md from the run.

`python -m services.reliability [--short] [--output F]`; `--short` is CI's run (the soak cut to 60 s).
Exits 1 if a gated figure misses its target (the short run reports latencies and memory growth, ungated).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

from services.common.settings import REPO_ROOT, ServiceSettings
from services.reliability import scenarios
from services.reliability.harness import load_average
from services.reliability.report import render


async def run(repository: Path, durations: scenarios.Durations) -> list[scenarios.Step]:
    """Every scenario in turn, each with processes of its own."""
    steps = []
    for name, scenario in (
        ("SIGTERM", lambda: scenarios.replica_stopped(repository, durations, signal.SIGTERM)),
        ("SIGKILL", lambda: scenarios.replica_stopped(repository, durations, signal.SIGKILL)),
        ("overload", lambda: scenarios.overload(repository, durations)),
        ("fuzz", lambda: scenarios.fuzz(durations)),
        ("soak", lambda: scenarios.soak(repository, durations)),
        ("health under preprocessing", lambda: scenarios.health_under_preprocessing(repository, durations)),
    ):
        started = time.monotonic()
        step = await scenario()
        figures = ", ".join(f"{f.name} {f.shown()} ({verdict(f, durations)})" for f in step.figures)
        sys.stdout.write(f"{name}: {figures} [{time.monotonic() - started:.0f} s]\n")
        sys.stdout.flush()
        steps.append(step)
    return steps


def verdict(figure: scenarios.Figure, durations: scenarios.Durations) -> str:
    """`ok`, `MISSED <target>`, or for an ungated miss `missed <target>, not gated`."""
    if figure.ok:
        return "ok"
    if figure.performance and not durations.gate_performance:
        return f"missed {figure.target}, not gated"
    return f"MISSED {figure.target}"


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, write the report; 0 if every figure met its target."""
    parser = argparse.ArgumentParser(prog="python -m services.reliability", description=__doc__)
    parser.add_argument("--short", action="store_true", help="CI's run: the soak cut to 60 s, the rest shortened")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "reliability.md", help="report path")
    parser.add_argument("--repository", type=Path, help="model repository (default: MAAS_MODEL_REPOSITORY)")
    args = parser.parse_args(argv)
    repository = args.repository or ServiceSettings().model_repository
    durations = scenarios.Durations.short() if args.short else scenarios.Durations.full()
    load_start, started = load_average(), time.monotonic()
    steps = asyncio.run(run(repository, durations))
    command = " ".join(["python -m services.reliability", *(argv if argv is not None else sys.argv[1:])])
    report = render(steps, durations, command, REPO_ROOT, time.monotonic() - started, (load_start, load_average()))
    args.output.write_text(report, encoding="utf-8")
    sys.stdout.write(f"wrote {args.output}\n")
    return 0 if all(step.passed(durations.gate_performance) for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
