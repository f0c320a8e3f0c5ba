"""Transformer benchmark: minilm_embed batching on vs off on reviews and short texts, padding, and in-process."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import replace

import grpc
import numpy as np
import torch

from maas.inference import grpc_service_pb2_grpc
from services.bench.loadgen import closed_loop, in_process, sequence_requests
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.cli.processes import running
from services.common.repository import newest_source, read_version
from services.tokenizer.model import WordPieceTokenizer, newest_tokenizer
from services.transformer.model import Encoder
from services.transformer.spec import EMBED_MODEL
from services.transformer.train import reviews

REVIEWS = 64
BATCH = 32
SHORT_TOKENS = 24
SHORT_THREADS = (1, 2)


def _threads(count: int) -> str:
    return f"{count} thread" + ("s" if count > 1 else "")


def _short_label(batching: str, threads: int) -> str:
    return f"short texts, batching {batching}, {_threads(threads)}"


async def _served(config: BenchConfig, env: dict[str, str], requests, concurrency: int):
    env = {"MAAS_TRANSFORMER_METRICS_PORT": "0", "MAAS_MODEL_REPOSITORY": str(config.repository), **env}
    async with running("transformer", "--port", "0", env=env) as address, grpc.aio.insecure_channel(address) as ch:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch)
        cycle = itertools.cycle(requests)
        return await closed_loop(lambda: stub.ModelInfer(next(cycle)), concurrency, config.duration, config.warmup)


def first_sentences(texts: list[str], tokenizer: WordPieceTokenizer, most_tokens: int) -> list[str]:
    """Each review's first sentence, kept if it is at most `most_tokens` tokens: real short texts."""
    sentences = [re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0] for text in texts]
    _, mask, _ = tokenizer.encode_arrays(sentences)
    return [sentence for sentence, length in zip(sentences, mask.sum(1), strict=True) if length <= most_tokens]


async def transformer_section(config: BenchConfig) -> Section:
    """Measure minilm_embed served several ways at the highest concurrency, on reviews and short texts."""
    high = max(config.concurrencies)
    texts, _ = reviews("testing_data")
    tokenizer = newest_tokenizer(config.repository)
    ids, mask, _ = tokenizer.encode_arrays(texts[:REVIEWS])
    lengths = mask.sum(1)
    short_ids, short_mask, _ = tokenizer.encode_arrays(first_sentences(texts, tokenizer, SHORT_TOKENS)[:REVIEWS])
    short_lengths = short_mask.sum(1)
    section = Section(
        title="Transformer (minilm_embed)",
        note=(
            f"One request = one real fine-food review, tokenized at its own length ({REVIEWS} reviews in turn: "
            f"median {int(np.median(lengths))} tokens, max {int(lengths.max())}); short texts = the first "
            f"sentences of the test reviews that are at most {SHORT_TOKENS} tokens ({REVIEWS} in turn: median "
            f"{int(np.median(short_lengths))} tokens), the length of a search query. The service runs as its own "
            "process with 1 torch thread; short texts also with 2 (this machine's cores, shared with the load "
            f"generator). Batching on = up to {BATCH} sequences per execution, with the service's default queue "
            "delay; length-aware pads each batch to its longest sequence, fixed pads every sequence to 256 "
            "(either way the encoder runs packed, on real tokens only); off = MAX_BATCH_SIZE 1. In-process rows "
            f"embed the same texts on one thread, in batches of {BATCH} padded to each batch's longest or one "
            "by one (req/s there counts sequences): what one thread can do with no serving at all."
        ),
    )
    requests, short_requests = (
        sequence_requests(EMBED_MODEL, ids, mask),
        sequence_requests(EMBED_MODEL, short_ids, short_mask),
    )
    points = [
        ("reviews, batching on, length-aware", {}, requests),
        ("reviews, batching on, fixed padding (256)", {"MAAS_TRANSFORMER_LENGTH_AWARE": "false"}, requests),
        ("reviews, batching off", {"MAAS_TRANSFORMER_MAX_BATCH_SIZE": "1"}, requests),
    ]
    for threads in SHORT_THREADS:
        on_env, off_env = {"MAAS_TRANSFORMER_NUM_THREADS": str(threads)}, {"MAAS_TRANSFORMER_MAX_BATCH_SIZE": "1"}
        points += [
            (_short_label("on, length-aware", threads), on_env, short_requests),
            (_short_label("off", threads), {**on_env, **off_env}, short_requests),
        ]
    for label, env, load in points:
        section.rows.append(Row(label, await _served(config, env, load, high)))
    directory = newest_source(config.repository, EMBED_MODEL)
    encoder = Encoder(directory, read_version(directory, EMBED_MODEL).architecture["bert"])
    workloads = {"reviews": (ids, mask), "short texts": (short_ids, short_mask)}
    local: dict[tuple[str, int], float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for texts_label, arrays in workloads.items():
            for batch in (BATCH, 1):
                result = in_process(_embedder(encoder, *arrays, batch), config.duration, config.warmup)
                result = replace(result, completed=result.completed * batch)
                section.rows.append(Row(f"in-process, {texts_label}, batch {batch}", result))
                local[texts_label, batch] = result.throughput
    finally:
        torch.set_num_threads(threads)
    on = section.row("reviews, batching on, length-aware", high).throughput
    fixed = section.row("reviews, batching on, fixed padding (256)", high).throughput
    off = section.row("reviews, batching off", high).throughput
    short_on = {t: section.row(_short_label("on, length-aware", t), high).throughput for t in SHORT_THREADS}
    short_off = {t: section.row(_short_label("off", t), high).throughput for t in SHORT_THREADS}
    best_on, best_off = max(short_on, key=short_on.get), max(short_off, key=short_off.get)
    same = "; ".join(f"{short_on[t] / short_off[t]:.1f}x with {_threads(t)} each" for t in SHORT_THREADS)
    ceiling = {texts_label: local[texts_label, BATCH] / local[texts_label, 1] for texts_label in workloads}
    section.findings = [
        f"At concurrency {high} on short texts, batching serves {short_on[best_on] / short_off[best_off]:.1f}x the "
        f"requests of no batching, each at its best thread count ({short_on[best_on]:,.1f} req/s with "
        f"{_threads(best_on)} vs {short_off[best_off]:,.1f} req/s with {_threads(best_off)}; target: at least 3x). "
        f"With the same threads: {same}. Batches of one use a second thread poorly and contend with the load "
        "generator for these 2 cores; batches of 32 use it well.",
        f"At concurrency {high} on whole reviews, batching serves {on / off:.1f}x the requests of no batching "
        f"({on:,.1f} vs {off:,.1f} req/s). The ceiling is the CPU's: in-process on one thread, batch {BATCH} embeds "
        f"{ceiling['reviews']:.1f}x the sequences per second of batch 1 on reviews (one review is already "
        f"matrices of ~70 rows) and {ceiling['short texts']:.1f}x on short texts.",
        f"Length-aware padding serves {on / fixed:.1f}x fixed padding to 256 on real review lengths: the encoder "
        "runs packed, so padding costs copies, not compute.",
        f"Served reaches {on / local['reviews', BATCH]:.0%} of in-process throughput at batch {BATCH} on reviews "
        f"({local['reviews', BATCH]:,.1f} sequences/s; target: at least 70%).",
    ]
    return section


def _embedder(encoder: Encoder, ids: np.ndarray, mask: np.ndarray, batch: int) -> Callable[[], None]:
    """A call embedding the next `batch` rows of `ids` in turn, each batch padded to its longest."""
    lengths = mask.sum(1)
    starts = itertools.cycle(range(0, len(ids) - batch + 1, batch))

    def embed() -> None:
        start = next(starts)
        width = int(lengths[start : start + batch].max())
        encoder.embed(ids[start : start + batch, :width], mask[start : start + batch, :width])

    return embed
