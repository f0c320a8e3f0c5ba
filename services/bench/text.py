"""Text benchmark: review_lstm batching on vs off, int8 vs fp32 for the LSTM and MiniLM, and in-process."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import torch

from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import closed_loop, in_process, interleaved, sequence_requests
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.cli.processes import running
from services.common.repository import MODEL_FILE, ModelFile, publish_quantized, read_version
from services.common.reviews import reviews
from services.common.torch_weights import DYNAMIC_INT8
from services.text.model import Classifier, TorchLSTM
from services.text.spec import MODEL_NAME
from services.tokenizer.model import newest_tokenizer
from services.transformer.spec import EMBED_MODEL, SENTIMENT_MODEL

REVIEWS = 64
BATCH = 32


def side_by_side(repository: Path, model: str, into: Path) -> dict[str, str]:
    """Hard-link every version of `model` into repository `into`, add an int8 version (quantized at
    load) of its newest unquantized one, and serve just those two.

    Returns:
        Precision ("fp32", "int8") -> version.
    """
    shutil.copytree(repository / model, into / model, copy_function=os.link, ignore=shutil.ignore_patterns(MODEL_FILE))
    int8 = publish_quantized(into, model, DYNAMIC_INT8, lambda directory, config: ({}, {}))
    fp32 = read_version(int8, model).data["quantized_from"].rsplit("/", 1)[1]
    policy = ModelFile(version_policy=f"specific:{fp32},{int8.name}")
    (into / model / MODEL_FILE).write_text(policy.model_dump_json(), encoding="utf-8")
    return {"fp32": fp32, "int8": int8.name}


def _service(service: str, repository: Path, **env: str):
    prefix = f"MAAS_{service.upper()}_"
    settings = {"METRICS_PORT": "0", **env}
    return running(
        service,
        "--port",
        "0",
        env={"MAAS_MODEL_REPOSITORY": str(repository), **{prefix + k: v for k, v in settings.items()}},
    )


async def _load(config: BenchConfig, address: str, rows: list[Row], points: dict[str, list], concurrencies) -> None:
    """Rows for each labelled list of requests: interleaved at concurrency 1, closed loop above."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        cycles = {label: itertools.cycle(requests) for label, requests in points.items()}
        calls = {label: (lambda c=cycle: stub.ModelInfer(next(c))) for label, cycle in cycles.items()}
        if 1 in concurrencies:
            rows += [
                Row(label, result)
                for label, result in (await interleaved(calls, config.duration, config.warmup)).items()
            ]
        for concurrency in (c for c in concurrencies if c > 1):
            for label, call in calls.items():
                rows.append(Row(label, await closed_loop(call, concurrency, config.duration, config.warmup)))


async def text_section(config: BenchConfig) -> Section:
    """Measure review_lstm with and without batching, its int8 version, MiniLM int8, and in-process."""
    high = max(config.concurrencies)
    texts, _ = reviews("testing_data")
    tokenizer = newest_tokenizer(config.repository)
    ids, mask, _ = tokenizer.encode_arrays(texts[:REVIEWS])
    lengths = mask.sum(1)
    section = Section(
        title="Text (review_lstm) and int8",
        note=(
            f"One request = one real fine-food review, tokenized at its own length ({REVIEWS} reviews in turn: "
            f"median {int(np.median(lengths))} tokens, max {int(lengths.max())}). Each service runs as its own "
            "process with 1 torch thread, serving the newest fp32 version and its int8 version (dynamic int8 "
            "LSTM/Linear layers, quantized at load) side by side; requests are pinned to one of them. At "
            "concurrency 1 the versions alternate call by call. Batching on = up to "
            f"{BATCH} sequences per execution, length-aware; off = MAX_BATCH_SIZE 1. In-process rows run the "
            f"LSTM on one thread over the same reviews in batches of {BATCH} (req/s there counts sequences)."
        ),
    )
    with tempfile.TemporaryDirectory(prefix="maas-bench-") as scratch:
        repository = Path(scratch)
        for model in ("tokenizer", SENTIMENT_MODEL):
            shutil.copytree(config.repository / model, repository / model, copy_function=os.link)
        versions = side_by_side(config.repository, MODEL_NAME, repository)
        lstm = {
            f"review_lstm {p}, batching on": sequence_requests(MODEL_NAME, ids, mask, v) for p, v in versions.items()
        }
        async with _service("text", repository) as address:
            await _load(config, address, section.rows, lstm, config.concurrencies)
        async with _service("text", repository, MAX_BATCH_SIZE="1") as address:
            off = {"review_lstm fp32, batching off": sequence_requests(MODEL_NAME, ids, mask, versions["fp32"])}
            await _load(config, address, section.rows, off, [high])
        embed = side_by_side(config.repository, EMBED_MODEL, repository)
        minilm = {
            f"minilm_embed {p}, batching on": sequence_requests(EMBED_MODEL, ids, mask, v) for p, v in embed.items()
        }
        async with _service("transformer", repository) as address:
            await _load(config, address, section.rows, minilm, config.concurrencies)
        directory = repository / MODEL_NAME / versions["fp32"]
        hyperparameters = read_version(directory, MODEL_NAME).architecture["hyperparameters"]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for precision, scheme in (("fp32", None), ("int8", DYNAMIC_INT8)):
                classifier = Classifier(
                    TorchLSTM(directory, hyperparameters, scheme), int(hyperparameters["vocab_size"])
                )
                batches = itertools.cycle(range(0, REVIEWS, BATCH))

                def forward(model: Classifier = classifier, starts=batches) -> None:
                    start = next(starts)
                    width = int(lengths[start : start + BATCH].max())
                    model.probabilities(ids[start : start + BATCH, :width], mask[start : start + BATCH, :width])

                result = in_process(forward, config.duration, config.warmup)
                label = f"in-process review_lstm {precision}, batch {BATCH}"
                section.rows.append(Row(label, replace(result, completed=result.completed * BATCH)))
        finally:
            torch.set_num_threads(threads)
    on = section.row("review_lstm fp32, batching on", high).throughput
    off_high = section.row("review_lstm fp32, batching off", high).throughput
    local = section.row(f"in-process review_lstm fp32, batch {BATCH}", 1).throughput

    def speedup(model: str, concurrency: int) -> str:
        fp32 = section.row(f"{model} fp32, batching on", concurrency)
        int8 = section.row(f"{model} int8, batching on", concurrency)
        return (
            f"{int8.throughput / fp32.throughput:.2f}x the requests of fp32 at concurrency {concurrency} "
            f"(p50 {int8.p50_ms:.2f} vs {fp32.p50_ms:.2f} ms)"
        )

    low = min(config.concurrencies)
    section.findings = [
        f"At concurrency {high}, batching serves {on / off_high:.1f}x the requests of no batching for the LSTM "
        f"({on:,.0f} vs {off_high:,.0f} req/s).",
        f"Served LSTM with batching reaches {on / local:.0%} of its in-process throughput at batch {BATCH} "
        f"({local:,.0f} sequences/s on one thread).",
        f"review_lstm int8 serves {speedup('review_lstm', low)}; {speedup('review_lstm', high)}.",
        f"minilm_embed int8 serves {speedup('minilm_embed', low)}; {speedup('minilm_embed', high)}.",
    ]
    return section
