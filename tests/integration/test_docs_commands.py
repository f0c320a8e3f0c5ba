"""Every runnable command block of the README and the docs runs against one `maas up`, from the repository's
root, and exits 0; the blocks marked not runnable are listed with their reasons (`pytest -s` prints the
list; tests/unit/test_pages.py checks each has one). How blocks are marked: tests/pages.py.

The stack runs on free ports; each block runs with the same `MAAS_*_PORT` variables in its environment
(so `maas infer` finds the gateway) and with the ports the pages show (`127.0.0.1:50051`, `:8080`,
`:51052`, ...) replaced by the ports the stack really listens on. `.venv/bin` comes first on PATH. A
block must leave the checkout as it found it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.catalog import SERVICES
from services.common.settings import METRICS_PORT_OFFSET
from tests.conftest import PYTHON, free_port, terminate
from tests.pages import REPO_ROOT, Block, command_blocks, console_commands

BLOCKS = command_blocks()
RUNNABLE = [block for block in BLOCKS if block.runnable]
BLOCK_TIMEOUT_S = 120
GATEWAY_HTTP_PORT = 8080
ADDRESS = re.compile(r"\b(127\.0\.0\.1|localhost):(\d+)\b")


@dataclass
class Stack:
    """One `maas up` on free ports, and how the pages' default ports map onto them."""

    env: dict[str, str]
    ports: dict[int, int]

    def localized(self, code: str) -> str:
        """The block with every loopback address at a default port moved to the stack's port."""
        return ADDRESS.sub(lambda m: f"{m[1]}:{self.ports.get(int(m[2]), int(m[2]))}", code)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env: dict[str, str] = {}
    ports: dict[int, int] = {}
    for spec in SERVICES.values():
        port, metrics = free_port(), free_port()
        env[f"{spec.prefix}PORT"], env[f"{spec.prefix}METRICS_PORT"] = str(port), str(metrics)
        ports[spec.port], ports[spec.port + METRICS_PORT_OFFSET] = port, metrics
    ports[GATEWAY_HTTP_PORT] = free_port()
    env["MAAS_GATEWAY_HTTP_PORT"] = str(ports[GATEWAY_HTTP_PORT])
    process = subprocess.Popen(
        [PYTHON, "-m", "services.cli.main", "up"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in process.stdout:
            seen.append(line.strip())
            if line.split()[:2] == ["READY", "all"]:
                break
        assert seen[-1:] == ["READY all"], (
            f"maas up stopped before READY all ({seen}); `make test` makes the default models first"
        )
        path = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        yield Stack({**os.environ, **env, "PATH": path}, ports)
    finally:
        terminate(process)


def checkout_state() -> str:
    """What `git status` says of the checkout (empty outside a git checkout)."""
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return status.stdout if status.returncode == 0 else ""


def command(block: Block) -> list[str]:
    """How a block runs: bash with errexit and pipefail, or the venv's Python."""
    if block.language == "python":
        return [PYTHON, "-"]
    return ["bash", "-e", "-o", "pipefail", "-s"]


def script(block: Block) -> str:
    return console_commands(block.code) if block.language == "console" else block.code


def test_the_blocks_not_run_are_listed_with_their_reasons():
    others = [block for block in BLOCKS if not block.runnable]
    assert RUNNABLE and others, "the pages have runnable blocks and blocks that say why they are not"
    print(*(f"{block.name}: {block.reason}" for block in others), sep="\n")
    assert all(block.reason.strip() for block in others)


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[block.name for block in RUNNABLE])
def test_each_runnable_command_block_runs(block: Block, stack: Stack):
    before = checkout_state()
    ran = subprocess.run(
        command(block),
        input=stack.localized(script(block)),
        cwd=REPO_ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    assert ran.returncode == 0, (
        f"{block.name} exited {ran.returncode}\n--- stdout\n{ran.stdout[-3000:]}\n--- stderr\n{ran.stderr[-3000:]}"
    )
    assert checkout_state() == before, f"{block.name} changed the checkout"


def test_the_readme_has_runnable_blocks():
    readme = [block for block in BLOCKS if block.page == REPO_ROOT / "README.md"]
    assert sum(block.runnable for block in readme) >= 3, [block.name for block in readme]
