"""The linear test model (every version the repository holds) on its own server process, so its metrics
start from zero: `python -m tests.integration.linear_server REPOSITORY METRICS_PORT` prints
`READY linear 127.0.0.1:<port>`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from services.common.server import GrpcServer, serve
from services.common.settings import EchoSettings
from services.common.versions import ModelRegistry
from tests.contract.linear_model import linear


def main() -> None:
    repository, metrics_port = Path(sys.argv[1]), int(sys.argv[2])
    model = linear(repository, max_batch_size=8, max_queue_delay_ms=2)
    settings = EchoSettings(port=0, metrics_port=metrics_port, log_level="WARNING")
    asyncio.run(serve(GrpcServer("linear", settings, ModelRegistry([model]))))


if __name__ == "__main__":
    main()
