"""Stock perf_analyzer (Triton's benchmark client) against any v2 gRPC server.

Every maas model gets one real request as perf_analyzer `--input-data` (random bytes are not valid
images, token ids or text): a Fashion-MNIST test image, and a fine-food review as text or as the
tokenizer's WordPiece ids. The files are committed under `scripts/perf_analyzer/`;
`python -m services.bench.perf_analyzer MODEL_REPOSITORY` writes them again from the data and the
repository's tokenizer. perf_analyzer itself is installed by `scripts/peers.py perf_analyzer`.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.bench.tokenizer import REVIEWS
from services.catalog import model_services
from services.common.settings import REPO_ROOT
from services.gateway.pipelines import PIPELINES
from services.text.spec import MODEL_NAME as LSTM
from services.tokenizer.model import newest_tokenizer
from services.tokenizer.spec import MODEL_NAME as TOKENIZER
from services.transformer.spec import EMBED_MODEL, SENTIMENT_MODEL
from services.vision.data import load_split
from services.vision.spec import MODEL_NAME as VISION

BINARY = REPO_ROOT / ".peers" / "bin" / "perf_analyzer"
INPUT_DATA = REPO_ROOT / "scripts" / "perf_analyzer"
SERVICE_MODELS = tuple(model for spec in model_services() for model in spec.model_names)
"""Models the model services serve (each also through the gateway)."""
GATEWAY_MODELS = tuple(PIPELINES)
"""Models only the gateway serves: text in, tokenizer then model downstream."""


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer failed or reported an error; the message holds the end of its output."""


@dataclass(frozen=True)
class PerfResult:
    """perf_analyzer's report of one concurrency (its last stable measurement windows). Latencies in ms."""

    concurrency: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    output: str


def input_data(repository: Path) -> dict[str, dict]:
    """perf_analyzer's `--input-data` document of every maas model that takes inputs.

    Shapes leave out the batch dimension where the model's ModelConfig reports one (max_batch_size
    > 0), as perf_analyzer expects.

    Args:
        repository: the model repository whose newest tokenizer makes the token ids.

    Returns:
        Model name -> its JSON document.
    """
    image = load_split("test")[0][0]
    review = REVIEWS[0]
    ids, mask, _ = newest_tokenizer(repository).encode_arrays([review])
    sequences = {
        "INPUT_IDS": {"content": ids[0].tolist(), "shape": [ids.shape[1]]},
        "ATTENTION_MASK": {"content": mask[0].tolist(), "shape": [mask.shape[1]]},
    }
    text = {"TEXT": {"content": [review], "shape": [1]}}
    documents = {
        TOKENIZER: text,
        VISION: {"IMAGE": {"content": image.ravel().tolist(), "shape": list(image.shape)}},
        LSTM: sequences,
        EMBED_MODEL: sequences,
        SENTIMENT_MODEL: sequences,
        **dict.fromkeys(GATEWAY_MODELS, text),
    }
    return {model: {"data": [inputs]} for model, inputs in documents.items()}


def write_input_data(repository: Path, directory: Path = INPUT_DATA) -> list[Path]:
    """Write `<directory>/<model>.json` for every model of `input_data`; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model, document in input_data(repository).items():
        path = directory / f"{model}.json"
        path.write_text(json.dumps(document) + "\n", encoding="utf-8")
        written.append(path)
    return written


def arguments(model: str, address: str, concurrency: int, window_ms: int) -> list[str]:
    """perf_analyzer's command line for one model and concurrency (without the binary).

    Every window counts as stable (`-s 1000`), so a run takes three windows on a noisy machine too;
    `--shape` repeats each input's shape from the input data (for -1 dimensions).
    """
    args = ["-m", model, "-u", address, "-i", "grpc", "--concurrency-range", str(concurrency)]
    args += ["-p", str(window_ms), "-s", "1000"]
    data = INPUT_DATA / f"{model}.json"
    if data.is_file():
        args += ["--input-data", str(data)]
        for name, tensor in json.loads(data.read_text())["data"][0].items():
            args += ["--shape", f"{name}:{','.join(map(str, tensor['shape']))}"]
    return args


async def run(model: str, address: str, concurrency: int, window_ms: int = 1000, timeout: float = 120) -> PerfResult:
    """Run perf_analyzer once against `address` and parse its CSV report.

    Args:
        model: the v2 model to load.
        address: `host:port` of the v2 gRPC server.
        concurrency: requests in flight (perf_analyzer's closed loop).
        window_ms: length of a measurement window.
        timeout: seconds before the run is stopped.

    Returns:
        What perf_analyzer reported.

    Raises:
        PerfAnalyzerError: perf_analyzer is not installed, exited with an error, or printed one.
    """
    if not BINARY.is_file():
        raise PerfAnalyzerError(f"{BINARY} is missing: run `python scripts/peers.py perf_analyzer` (make test does)")
    with tempfile.TemporaryDirectory(prefix="maas-perf-") as scratch:
        report = Path(scratch) / "report.csv"
        process = await asyncio.create_subprocess_exec(
            str(BINARY),
            *arguments(model, address, concurrency, window_ms),
            "-f",
            str(report),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            raw, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise PerfAnalyzerError(f"perf_analyzer on {model} at {address} ran over {timeout:.0f} s") from None
        output = raw.decode(errors="replace")
        if process.returncode or "error" in output.lower() or not report.is_file():
            raise PerfAnalyzerError(
                f"perf_analyzer on {model} at {address} (exit status {process.returncode}):\n{output[-1500:]}"
            )
        (row,) = csv.DictReader(report.read_text().splitlines())
    return PerfResult(
        concurrency=int(row["Concurrency"]),
        throughput=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000,
        p95_ms=float(row["p95 latency"]) / 1000,
        p99_ms=float(row["p99 latency"]) / 1000,
        output=output,
    )


if __name__ == "__main__":
    for path in write_input_data(Path(sys.argv[1])):
        sys.stdout.write(f"wrote {path.relative_to(REPO_ROOT)}\n")
