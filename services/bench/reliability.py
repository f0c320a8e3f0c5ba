"""Reliability benchmarks: refusing excess load (a full queue) and preparing large requests off the
event loop, each measured against the alternative in the same run."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc

from maas.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from services.bench.callers import FIXED_BACKOFF_SECONDS, POLICIES, caller_process, hold_a_worker
from services.bench.loadgen import LoadResult, interleaved, summarize
from services.bench.report import Row, Section
from services.bench.settings import BenchConfig
from services.bench.tokenizer import REVIEWS
from services.bench.transformer import SHORT_TOKENS, first_sentences, sequence_requests
from services.cli.processes import running
from services.common.repository import version_dirs
from services.common.settings import ServiceSettings
from services.tokenizer.model import WordPieceTokenizer
from services.transformer.spec import EMBED_MODEL
from services.transformer.train import reviews

QUEUE = 16
CALLERS = 16
OVERLOAD_CALLERS = 256
CALLER_PROCESSES = 4
START_MARGIN_SECONDS = 0.5
OFFLOAD_EVERYTHING = 0
INLINE_EVERYTHING = 1 << 62


@dataclass(frozen=True)
class Overload:
    """What closed-loop callers against a full queue measured: answers, refusals, other failures."""

    answered: LoadResult
    refused: LoadResult
    other: int


async def overloaded(
    pool: ProcessPoolExecutor,
    address: str,
    requests: list[bytes],
    concurrency: int,
    config: BenchConfig,
    policy: str,
) -> Overload:
    """Run `concurrency` closed-loop callers, spread evenly over the pool's `CALLER_PROCESSES` processes
    and started together, timing answered and refused (RESOURCE_EXHAUSTED) calls apart.

    Args:
        pool: the caller processes.
        address: the service.
        requests: serialized v2 requests, sent in turn.
        concurrency: callers running at once, in all.
        config: measured and warm-up seconds.
        policy: what a refused caller does before its next call (a key of `POLICIES`).
    """
    loop = asyncio.get_running_loop()
    start_at = time.time() + START_MARGIN_SECONDS
    shares = [concurrency // CALLER_PROCESSES + (i < concurrency % CALLER_PROCESSES) for i in range(CALLER_PROCESSES)]
    parts = await asyncio.gather(
        *(
            loop.run_in_executor(
                pool, caller_process, i, address, requests, share, start_at, config.warmup, config.duration, policy
            )
            for i, share in enumerate(shares)
            if share
        )
    )
    answered = [t for part in parts for t in part[0]]
    refused = [t for part in parts for t in part[1]]
    failed = sum(part[2] for part in parts)
    seconds = max(part[3] for part in parts)
    return Overload(
        summarize(concurrency, answered, failed, seconds), summarize(concurrency, refused, 0, seconds), failed
    )


async def overload_section(config: BenchConfig) -> Section:
    """Measure a transformer with a queue of 16 under 16 callers, then under 256: goodput and refusals."""
    texts, _ = reviews("testing_data")
    tokenizer = WordPieceTokenizer(config.repository / "tokenizer" / version_dirs(config.repository, "tokenizer")[-1])
    ids, mask, _ = tokenizer.encode_arrays(first_sentences(texts, tokenizer, SHORT_TOKENS)[:64])
    requests = [request.SerializeToString() for request in sequence_requests(EMBED_MODEL, ids, mask)]
    section = Section(
        title="Overload (minilm_embed, queue of 16)",
        note=(
            f"The transformer runs as its own process with `MAAS_TRANSFORMER_MAX_QUEUE_SIZE={QUEUE}` (1 torch "
            f"thread, default batching); one request = one short text (the first sentences of the test reviews, "
            f"at most {SHORT_TOKENS} tokens, in turn). First {CALLERS} closed-loop callers (the queue never "
            f"fills), then {OVERLOAD_CALLERS} three times over, differing in what a caller refused with "
            "RESOURCE_EXHAUSTED (the queue is full) does before its next call: backs off as a client with the "
            "usual retry policy does (50 ms, doubling with each refusal in a row to 1 s, jittered), waits "
            f"{FIXED_BACKOFF_SECONDS * 1000:.0f} ms, or retries at once. Refusals are timed apart from answered "
            f"calls (their req/s counts refusals). The callers are spread over {CALLER_PROCESSES} client "
            "processes (asyncio, one channel each), started together; they share the machine's cores with the "
            "service."
        ),
    )
    env = {
        "MAAS_TRANSFORMER_METRICS_PORT": "0",
        "MAAS_MODEL_REPOSITORY": str(config.repository),
        "MAAS_TRANSFORMER_MAX_QUEUE_SIZE": str(QUEUE),
    }
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(CALLER_PROCESSES, mp_context=spawn) as pool:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, hold_a_worker) for _ in range(CALLER_PROCESSES)))
        async with running("transformer", "--port", "0", env=env) as address:
            first = next(iter(POLICIES))
            base = (await overloaded(pool, address, requests, CALLERS, config, first)).answered
            section.rows.append(Row(f"{CALLERS} callers", base))
            results = {}
            for label in POLICIES:
                results[label] = await overloaded(pool, address, requests, OVERLOAD_CALLERS, config, label)
                section.rows.append(Row(f"{OVERLOAD_CALLERS} callers, {label}: answered", results[label].answered))
                section.rows.append(Row(f"{OVERLOAD_CALLERS} callers, {label}: refused", results[label].refused))
    for label, result in results.items():
        section.findings.append(
            f"{OVERLOAD_CALLERS} callers, {label}: refusals take {result.refused.p99_ms:.1f} ms at p99 "
            f"({result.refused.p50_ms:.1f} ms p50; target: at most 5 ms), and goodput is "
            f"{result.answered.throughput / base.throughput:.0%} of the {CALLERS}-caller rate "
            f"({result.answered.throughput:,.0f} vs {base.throughput:,.0f} req/s; target: at least 80%); "
            f"{result.other} calls failed otherwise."
        )
    return section


async def inline_section(config: BenchConfig) -> Section:
    """Measure a small request at concurrency 1 with the default inline threshold, with everything inline
    (as before the threshold), and with everything on a worker thread, alternating call by call."""
    default = ServiceSettings.model_fields["inline_max_bytes"].default
    section = Section(
        title="Inline threshold (tokenizer, concurrency 1)",
        note=(
            f"Three tokenizer processes differ only in `MAAS_TOKENIZER_INLINE_MAX_BYTES`: the default "
            f"({default // 1024} KiB: requests up to it are prepared on the event loop, larger ones on worker "
            "threads in chunks), everything inline (the only path before the threshold existed), and everything on "
            f"a worker thread (0). One request = a typed Tokenize of the same {len(REVIEWS)} reviews "
            f"({sum(len(r.encode()) for r in REVIEWS):,} bytes, under the default threshold); one caller "
            "alternates between the three call by call, so they see the same machine."
        ),
    )
    labels = {
        f"inline up to {default // 1024} KiB (default)": default,
        "everything inline (before)": INLINE_EVERYTHING,
        "everything on a worker thread": OFFLOAD_EVERYTHING,
    }
    request = tokenizer_pb2.TokenizeRequest(texts=REVIEWS)
    env = {"MAAS_TOKENIZER_METRICS_PORT": "0", "MAAS_MODEL_REPOSITORY": str(config.repository)}
    calls = {}
    async with AsyncExitStack() as stack:
        for label, limit in labels.items():
            limited = {**env, "MAAS_TOKENIZER_INLINE_MAX_BYTES": str(limit)}
            address = await stack.enter_async_context(running("tokenizer", "--port", "0", env=limited))
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
            stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
            calls[label] = lambda stub=stub: stub.Tokenize(request, timeout=30)
        results = await interleaved(calls, config.duration, config.warmup)
    for label, result in results.items():
        section.rows.append(Row(label, result))
    new, old, off = (results[label] for label in labels)
    section.findings = [
        f"The threshold costs {new.p50_ms - old.p50_ms:+.3f} ms p50 against everything inline "
        f"({new.p50_ms:.3f} vs {old.p50_ms:.3f} ms; p99 {new.p99_ms:.3f} vs {old.p99_ms:.3f} ms).",
        f"Sending this small request to a worker thread would cost {off.p50_ms - old.p50_ms:+.3f} ms p50.",
    ]
    return section
