"""Measure two checkouts of maas side by side: the same servers from each, loaded in alternating rounds.

Both checkouts' vision, transformer and gateway run at once (`maas run` from each tree, on free ports, over
one model repository); every round measures each row on one and then the other, the order flipping
from round to round, so drift on a shared machine falls on both. Rows: `fashion_cnn` and `minilm_embed`
direct at concurrency 1 and 16, and the gateway hop (`fashion_cnn` through each side's gateway beside
direct, call by call at concurrency 1; through the gateway at 16). Prints one markdown table of medians
over the rounds, with new / old ratios; `--output docs/benchmarks.md` also writes it there as one section,
replacing the section of the same title and keeping the rest.

Usage (under the machine's lock, e.g. `flock /tmp/maas-cpu.lock ...`):
    python scripts/compare_servers.py --old /path/to/old/checkout [--new .] [--rounds 7] [--seconds 4]
        [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import grpc

from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import LoadResult, closed_loop, interleaved
from services.bench.report import git_revision, machine
from services.bench.tokenizer import REVIEWS
from services.cli.processes import serving
from services.common.codec import Tensor, encode_inputs
from services.common.settings import REPO_ROOT, ServiceSettings
from services.gateway.routing import ModelRoute, Routing, Target
from services.tokenizer.model import newest_tokenizer
from services.vision.data import load_split

WARMUP_SECONDS = 0.5
HIGH = 16
SECTION_TITLE = "Two checkouts side by side (scripts/compare_servers.py)"


def request(model: str, tensors: list[Tensor]) -> v2pb.ModelInferRequest:
    message = v2pb.ModelInferRequest(model_name=model)
    encode_inputs(message, tensors)
    return message


async def start(stack: AsyncExitStack, tree: Path, service: str, env: dict[str, str]) -> str:
    """`maas run SERVICE --port 0` from `tree`'s own code and stubs; returns its address."""
    prefix = f"MAAS_{service.upper()}_"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        "run",
        service,
        "--port",
        "0",
        cwd=tree,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join((str(tree), str(tree / "protos"))),
            f"{prefix}METRICS_PORT": "0",
            **env,
        },
        stdout=subprocess.PIPE,
    )
    return await stack.enter_async_context(serving(process, service))


async def side(stack: AsyncExitStack, tree: Path, repository: Path, workdir: Path) -> dict[str, object]:
    """One checkout's vision, transformer and gateway; returns v2 stubs: direct and through its gateway."""
    env = {"MAAS_MODEL_REPOSITORY": str(repository)}
    vision = await start(stack, tree, "vision", env)
    transformer = await start(stack, tree, "transformer", env)
    routing = Routing(
        targets={"vision": Target(address=f"dns:///{vision}"), "transformer": Target(address=f"dns:///{transformer}")},
        models={"fashion_cnn": ModelRoute(target="vision"), "minilm_embed": ModelRoute(target="transformer")},
    )
    routing_file = workdir / f"routing-{tree.name}.yaml"
    routing_file.write_text(routing.to_yaml(), encoding="utf-8")
    gateway_env = {"MAAS_GATEWAY_ROUTING_FILE": str(routing_file), "MAAS_GATEWAY_HTTP_PORT": "0"}
    gateway = await start(stack, tree, "gateway", {**env, **gateway_env})
    stubs = {}
    for name, address in (("vision", vision), ("transformer", transformer), ("gateway", gateway)):
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
        stubs[name] = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    return stubs


async def measure_round(stubs: dict, image: v2pb.ModelInferRequest, embed: v2pb.ModelInferRequest, seconds: float):
    """Every row once on one side: row -> (figure, unit)."""
    vision, transformer, gateway = stubs["vision"], stubs["transformer"], stubs["gateway"]
    rows: dict[str, LoadResult] = {}
    rows["fashion_cnn c=1"] = await closed_loop(lambda: vision.ModelInfer(image), 1, seconds, WARMUP_SECONDS)
    rows["fashion_cnn c=16"] = await closed_loop(lambda: vision.ModelInfer(image), HIGH, seconds, WARMUP_SECONDS)
    rows["minilm_embed c=1"] = await closed_loop(lambda: transformer.ModelInfer(embed), 1, seconds, WARMUP_SECONDS)
    rows["minilm_embed c=16"] = await closed_loop(lambda: transformer.ModelInfer(embed), HIGH, seconds, WARMUP_SECONDS)
    hop = await interleaved(
        {"direct": lambda: vision.ModelInfer(image), "via": lambda: gateway.ModelInfer(image)}, seconds, WARMUP_SECONDS
    )
    via_high = await closed_loop(lambda: gateway.ModelInfer(image), HIGH, seconds, WARMUP_SECONDS)
    failed = sum(result.failed for result in (*rows.values(), *hop.values(), via_high))
    if failed:
        raise RuntimeError(f"{failed} calls failed")
    return {
        "fashion_cnn c=1 p50 ms": rows["fashion_cnn c=1"].p50_ms,
        "fashion_cnn c=1 req/s": rows["fashion_cnn c=1"].throughput,
        "fashion_cnn c=16 req/s": rows["fashion_cnn c=16"].throughput,
        "minilm_embed c=1 p50 ms": rows["minilm_embed c=1"].p50_ms,
        "minilm_embed c=1 req/s": rows["minilm_embed c=1"].throughput,
        "minilm_embed c=16 req/s": rows["minilm_embed c=16"].throughput,
        "gateway hop c=1 p50 ms (through minus direct)": hop["via"].p50_ms - hop["direct"].p50_ms,
        "fashion_cnn through the gateway c=16 req/s": via_high.throughput,
    }


async def compare(old: Path, new: Path, repository: Path, rounds: int, seconds: float) -> str:
    images, _ = load_split("test")
    image = request("fashion_cnn", [Tensor("IMAGE", "FP32", images[:1])])
    ids, mask, _ = newest_tokenizer(repository).encode_arrays([REVIEWS[0]])
    embed = request("minilm_embed", [Tensor("INPUT_IDS", "INT64", ids), Tensor("ATTENTION_MASK", "INT64", mask)])
    figures: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    async with AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maas-compare-")))
        sides = {"old": await side(stack, old, repository, workdir), "new": await side(stack, new, repository, workdir)}
        for number in range(rounds):
            order = ("old", "new") if number % 2 == 0 else ("new", "old")
            for name in order:
                for row, value in (await measure_round(sides[name], image, embed, seconds)).items():
                    figures[name].setdefault(row, []).append(value)
            print(f"round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    lines = [
        f"Medians of {rounds} alternating rounds, {seconds:g} s per row and side; old: `{old.name}` at "
        f"{git_revision(old)}, new: `{new.name}` at {git_revision(new)}.",
        "",
        "| row | old | new | new / old | old range | new range |",
        "|---|---|---|---|---|---|",
    ]
    for row in figures["old"]:
        before, after = figures["old"][row], figures["new"][row]
        ratio = statistics.median(after) / statistics.median(before)
        lines.append(
            f"| {row} | {statistics.median(before):,.2f} | {statistics.median(after):,.2f} | {ratio:.2f} | "
            f"{min(before):,.2f}-{max(before):,.2f} | {min(after):,.2f}-{max(after):,.2f} |"
        )
    return "\n".join(lines)


def write_section(output: Path, table: str, command: str) -> None:
    """Write `table` into the report at `output` as one `## ` section, replacing an earlier one of the same
    title where it stands (else appended); the report's other sections are kept."""
    section = "\n".join(
        [
            f"## {SECTION_TITLE}",
            "",
            f"_Measured by `{command}` on {machine()}, python {platform.python_version()}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC._",
            "",
            table,
            "",
        ]
    )
    text = output.read_text(encoding="utf-8") if output.exists() else ""
    pattern = re.compile(rf"^## {re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    output.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="the checkout measured against")
    parser.add_argument("--new", type=Path, default=REPO_ROOT, help="the checkout measured (default: this one)")
    parser.add_argument(
        "--repository", type=Path, default=None, help="model repository (default: MAAS_MODEL_REPOSITORY)"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per row, side and round")
    parser.add_argument("--output", type=Path, default=None, help="a report to write the table into as a section")
    args = parser.parse_args()
    repository = args.repository or ServiceSettings().model_repository
    table = asyncio.run(compare(args.old.resolve(), args.new.resolve(), repository, args.rounds, args.seconds))
    print(table)
    if args.output:
        command = shlex.join(["python", "scripts/compare_servers.py", *sys.argv[1:]])
        write_section(args.output, table, command)


if __name__ == "__main__":
    main()
