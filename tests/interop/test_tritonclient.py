"""Stock tritonclient against the runtime: a real server in this process, the client in another.

tritonclient and our generated `inference` stubs register the same protobuf symbols, so the client
runs as a subprocess (see docs/serving.md, "Open Inference Protocol stubs").
"""

from __future__ import annotations

import asyncio
import json
import subprocess

from services.common.server import GrpcServer
from tests.conftest import PYTHON, REPO_ROOT

HERE = REPO_ROOT / "tests" / "interop"


async def run_script(script: str, *args: str) -> dict:
    """Run a client script with the venv's Python; return its JSON output."""
    process = await asyncio.create_subprocess_exec(
        PYTHON, str(HERE / script), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def test_tritonclient_round_trips_echo(echo_server: GrpcServer):
    seen = await run_script("tritonclient_echo.py", f"127.0.0.1:{echo_server.port}")
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["metadata"] == {"name": "echo", "versions": ["1"], "platform": "maas_echo"}
    assert seen["server"] == "maas"
    assert seen["id"] == "interop-1" and seen["model_version"] == "1"
    assert seen["matched"] and all(seen["matched"].values()), seen["matched"]


async def test_tritonclient_round_trips_tokenizer(tokenizer_server: GrpcServer):
    texts = ["Hello, world!", "caf\u00e9 \U0001f600"]
    seen = await run_script("tritonclient_tokenizer.py", f"127.0.0.1:{tokenizer_server.port}", *texts)
    assert seen["ready"] and seen["dtype"] == "int64"
    assert [i["name"] for i in seen["inputs"]] == ["TEXT", "TEXT_PAIR"]
    assert seen["input_ids"] == [[101, 7592, 1010, 2088, 999, 102], [101, 7668, 100, 102, 0, 0]]
    assert seen["attention_mask"] == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert seen["token_type_ids"] == [[0] * 6] * 2
