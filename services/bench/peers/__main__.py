"""`python -m services.bench.peers`: run the peers benchmark and write `docs/peers.md` (see `run.py`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from services.bench import perf_analyzer
from services.bench.peers.report import Context, plot, render
from services.bench.peers.run import SYSTEMS, PeersConfig, run_peers
from services.common.settings import REPO_ROOT, ServiceSettings

DOCS = REPO_ROOT / "docs"


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Run every model's systems and write the page and its plots."""
    parser = argparse.ArgumentParser(prog="python -m services.bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="model repository (default: MAAS_MODEL_REPOSITORY)")
    parser.add_argument("--output", type=Path, default=DOCS / "peers.md", help="the page (plots go beside it)")
    defaults = PeersConfig(Path())
    parser.add_argument("--model", action="append", choices=defaults.models, help="measure only these (repeatable)")
    parser.add_argument("--concurrency", action="append", type=int, help="load points (default: 1, 4, 16, 64)")
    parser.add_argument(
        "--system", action="append", choices=SYSTEMS, help="measure only these systems (repeatable; default: all)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure maas grpc from this other checkout of maas (e.g. `git worktree add DIR main`): "
        "before and after a change in one run",
    )
    parser.add_argument("--duration", type=float, default=defaults.duration, help="load generator seconds per point")
    parser.add_argument("--window-ms", type=int, default=defaults.window_ms, help="perf_analyzer measurement window")
    args = parser.parse_args(argv)
    config = PeersConfig(
        args.repository or ServiceSettings().model_repository,
        concurrencies=tuple(args.concurrency or defaults.concurrencies),
        duration=args.duration,
        window_ms=args.window_ms,
        models=tuple(args.model or defaults.models),
        systems=tuple(args.system or defaults.systems),
        baseline=args.baseline.resolve() if args.baseline else None,
    )
    load_before, started = _load(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="maas-peers-") as logs:
        runs = asyncio.run(run_peers(config, Path(logs)))
    plots = {}
    for run in runs:
        image = args.output.parent / "peers" / f"{run.model}.png"
        plot(run, image)
        plots[run.model] = image.relative_to(args.output.parent).as_posix()
    tool = subprocess.run(
        [str(perf_analyzer.BINARY), "--version"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    versions = {
        "servers (ServerMetadata)": "; ".join(
            dict.fromkeys(f"{system}: {server}" for run in runs for system, server in run.servers.items())
        ),
        "perf_analyzer": tool.stdout.strip(),
        "torch": f"{torch.__version__}, {torch.get_num_threads()} thread(s) in-process",
    }
    command = " ".join(["python -m services.bench.peers", *(argv if argv is not None else sys.argv[1:])])
    longer = "; ".join(f"{model}'s points {factor:g} times as long" for model, factor in config.longer.items())
    timing = (
        f"the load generator {config.warmup:g} s of warm-up, then {config.duration:g} s measured; perf_analyzer "
        f"three {config.window_ms} ms windows; {longer}"
    )
    context = Context(command, timing, versions, load_before, _load(), (time.monotonic() - started) / 60)
    args.output.write_text(render(runs, context, REPO_ROOT, plots) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {args.output} and {', '.join(plots.values())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
